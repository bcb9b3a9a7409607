"""Diffusers-format ACE-Step repositories (`*-diffusers`) read into our DiT through a declarative key map.

Layout (what `AceStepPipeline.save_pretrained` and diffusers' `convert_ace_step_to_diffusers.py` write)::

    model_index.json            {"_class_name": "AceStepPipeline", "<component>": [library, class], ...}
    transformer/                AceStepTransformer1DModel      -> decoder.*
    condition_encoder/          AceStepConditionEncoder        -> encoder.*, null_condition_emb (+ silence_latent)
    audio_tokenizer/            AceStepAudioTokenizer          -> tokenizer.*
    audio_token_detokenizer/    AceStepAudioTokenDetokenizer   -> detokenizer.*
    vae/ text_encoder/ tokenizer/ scheduler/                   (not the DiT's; read by their own adapters)

Each DiT component folder holds `config.json` (diffusers field names; nulls mean the class default) and
`diffusion_pytorch_model.safetensors`, or shards listed in `diffusion_pytorch_model.safetensors.index.json`.

Parameter names differ from the official checkpoint only in the attention projections (`to_q/to_k/to_v`,
`to_out.0`, `norm_q/norm_k` for `q_proj/k_proj/v_proj`, `o_proj`, `q_norm/k_norm`), the patchify convs
(`proj_in_conv`/`proj_out_conv` for `proj_in.1`/`proj_out.1`), the component prefix, and
`null_condition_emb` living in the condition encoder. The condition encoder also stores the
`silence_latent` buffer ([1, N, 64], time-major), which is not a DiT parameter: the key map drops it
on purpose and `read_silence_latent` returns it. Any key that no rule knows keeps its qualified
diffusers name (`component/key`, never one of ours), so the loader reports it as unexpected.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from songstep.config import DiTConfig, check_field_types
from songstep.errors import CheckpointError
from songstep.loading.files import weight_files

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
PIPELINE_CLASS = "AceStepPipeline"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SILENCE_KEY = "silence_latent"
# Our config fields that diffusers' configs have no place for: written into transformer/config.json
# as extra keys by `songstep.loading.diffusers_export`, read back here; a folder without them (one
# diffusers' converter wrote) gets upstream's values, the DiTConfig defaults (timbre_fix_frame 750:
# the 30 s of silence latent that diffusers' pipeline also uses).
EXTRA_FIELDS = ("timbre_fix_frame", "timestep_mu", "timestep_sigma", "data_proportion")


@dataclass(frozen=True)
class Component:
    folder: str
    class_name: str
    prefix: str  # where its parameters live in our DiTModel


TRANSFORMER = Component("transformer", "AceStepTransformer1DModel", "decoder.")
CONDITION_ENCODER = Component("condition_encoder", "AceStepConditionEncoder", "encoder.")
AUDIO_TOKENIZER = Component("audio_tokenizer", "AceStepAudioTokenizer", "tokenizer.")
AUDIO_DETOKENIZER = Component("audio_token_detokenizer", "AceStepAudioTokenDetokenizer", "detokenizer.")
COMPONENTS = (TRANSFORMER, CONDITION_ENCODER, AUDIO_TOKENIZER, AUDIO_DETOKENIZER)
_BY_CLASS = {c.class_name: c for c in COMPONENTS}

# --------------------------------------------------------------------------------------------
# The key map: (component folder, full-match regex on the diffusers key, our name) — first match
# wins; `\g<0>` is the whole diffusers key; a None target drops a known non-DiT tensor.
# --------------------------------------------------------------------------------------------
_ATTENTION_LEAVES = (  # diffusers AceStepAttention -> upstream attention
    (r"to_q", "q_proj"),
    (r"to_k", "k_proj"),
    (r"to_v", "v_proj"),
    (r"to_out\.0", "o_proj"),
    (r"norm_q", "q_norm"),
    (r"norm_k", "k_norm"),
)
_MLP = r"mlp\.(?:gate|up|down)_proj\.weight"
_LINEAR = r"\.(?:weight|bias)"


def _stack(prefix: str) -> str:
    """embed_tokens -> encoder layers -> norm, as the lyric/timbre encoders, pooler and detokenizer have."""
    layer = rf"layers\.\d+\.(?:input_layernorm\.weight|post_attention_layernorm\.weight|{_MLP})"
    return rf"{prefix}(?:embed_tokens{_LINEAR}|norm\.weight|{layer})"


# component -> (regex of its attention modules, regexes of keys whose name is unchanged under the prefix)
_SAME_NAME: dict[Component, tuple[str, tuple[str, ...]]] = {
    TRANSFORMER: (
        r"layers\.\d+\.(?:self_attn|cross_attn)",
        (
            rf"layers\.\d+\.(?:(?:self_attn|cross_attn|mlp)_norm\.weight|{_MLP}|scale_shift_table)",
            rf"time_embed(?:_r)?\.(?:linear_1|linear_2|time_proj){_LINEAR}",
            rf"condition_embedder{_LINEAR}",
            r"norm_out\.weight",
            r"scale_shift_table",
        ),
    ),
    CONDITION_ENCODER: (
        r"(?:lyric|timbre)_encoder\.layers\.\d+\.self_attn",
        (r"text_projector\.weight", _stack(r"(?:lyric|timbre)_encoder\."), r"timbre_encoder\.special_token"),
    ),
    AUDIO_TOKENIZER: (
        r"attention_pooler\.layers\.\d+\.self_attn",
        (
            rf"audio_acoustic_proj{_LINEAR}",
            _stack(r"attention_pooler\."),
            r"attention_pooler\.special_token",
            rf"quantizer\.project_(?:in|out){_LINEAR}",
        ),
    ),
    AUDIO_DETOKENIZER: (r"layers\.\d+\.self_attn", (_stack(""), r"special_tokens", rf"proj_out{_LINEAR}")),
}

_RENAMED: tuple[tuple[Component, str, str | None], ...] = (
    (TRANSFORMER, r"proj_in_conv\.(?P<p>weight|bias)", r"decoder.proj_in.1.\g<p>"),
    (TRANSFORMER, r"proj_out_conv\.(?P<p>weight|bias)", r"decoder.proj_out.1.\g<p>"),
    (CONDITION_ENCODER, r"null_condition_emb", "null_condition_emb"),  # top level in ours
    (CONDITION_ENCODER, SILENCE_KEY, None),  # a buffer, not a DiT parameter: see read_silence_latent
)


def _build_rules() -> tuple[tuple[str, str, str | None], ...]:
    rows: list[tuple[str, str, str | None]] = [(c.folder, pat, target) for c, pat, target in _RENAMED]
    for comp, (attention, same) in _SAME_NAME.items():
        for theirs, ours in _ATTENTION_LEAVES:
            rows.append((comp.folder, rf"(?P<m>{attention})\.{theirs}\.(?P<p>weight|bias)", rf"{comp.prefix}\g<m>.{ours}.\g<p>"))
        rows.extend((comp.folder, pat, rf"{comp.prefix}\g<0>") for pat in same)
    return tuple(rows)


KEY_MAP: tuple[tuple[str, str, str | None], ...] = _build_rules()


class KeyMap:
    """Maps a qualified diffusers key `component/key` to our parameter name (None: dropped on
    purpose); keys no rule knows come back unchanged, a name the loader reports as unexpected.
    `for_file(path)` gives the per-file `rename(key)` the loader applies (the component is the
    file's folder), since the same key means different tensors in different components."""

    def __init__(self, rules: tuple[tuple[str, str, str | None], ...] = KEY_MAP) -> None:
        self._rules: dict[str, list[tuple[re.Pattern[str], str | None]]] = {}
        for folder, pattern, target in rules:
            self._rules.setdefault(folder, []).append((re.compile(pattern), target))

    def __call__(self, qualified: str) -> str | None:
        folder, _, key = qualified.partition("/")
        for pattern, target in self._rules.get(folder, ()):
            match = pattern.fullmatch(key)
            if match:
                return None if target is None else match.expand(target)
        return qualified

    def for_file(self, path: Path) -> Callable[[str], str | None]:
        folder = Path(path).parent.name
        return lambda key: self(f"{folder}/{key}")


# --------------------------------------------------------------------------------------------
# Configs: diffusers field names and defaults (the classes' __init__ defaults; null = default).
# --------------------------------------------------------------------------------------------
_SHARED_DEFAULTS: dict[str, Any] = dict(
    hidden_size=2048,
    intermediate_size=6144,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=1_000_000.0,
    attention_bias=False,
    attention_dropout=0.0,
    rms_norm_eps=1e-6,
    sliding_window=128,
    layer_types=None,
)
_DEFAULTS: dict[Component, dict[str, Any]] = {
    TRANSFORMER: dict(
        num_hidden_layers=24, in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2,
        encoder_hidden_size=None, is_turbo=False, model_version=None,
    ),
    CONDITION_ENCODER: dict(
        text_hidden_dim=1024, timbre_hidden_dim=64, num_lyric_encoder_hidden_layers=8, num_timbre_encoder_hidden_layers=4,
    ),
    AUDIO_TOKENIZER: dict(
        audio_acoustic_hidden_dim=64, pool_window_size=5, fsq_dim=2048, fsq_input_levels=[8, 8, 8, 5, 5, 5],
        fsq_input_num_quantizers=1, num_attention_pooler_hidden_layers=2,
    ),
    AUDIO_DETOKENIZER: dict(audio_acoustic_hidden_dim=64, pool_window_size=5, num_attention_pooler_hidden_layers=2),
}
_INT_FIELDS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "sliding_window", "num_hidden_layers", "in_channels", "audio_acoustic_hidden_dim", "patch_size",
    "text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers",
    "num_timbre_encoder_hidden_layers", "pool_window_size", "fsq_dim", "fsq_input_num_quantizers",
    "num_attention_pooler_hidden_layers",
)
_LAYER_TYPES = ("sliding_attention", "full_attention")


@dataclass(frozen=True)
class _Loaded:
    """One component's merged config and where it came from (for error messages)."""

    comp: Component
    path: Path
    values: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not found") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return data


def _load_component_config(root: Path, comp: Component) -> _Loaded:
    folder = root / comp.folder
    if not folder.is_dir():
        raise CheckpointError(
            f"{root}: diffusers repository has no {comp.folder}/ component ({comp.class_name}); the DiT needs "
            f"{', '.join(c.folder for c in COMPONENTS)} (older conversions omitted the audio tokenizers)"
        )
    path = folder / CONFIG_NAME
    data = _read_json(path)
    cls = data.get("_class_name")
    if cls is not None and cls != comp.class_name:
        raise CheckpointError(f"{path}: _class_name {cls!r}, expected {comp.class_name!r}")
    values = {**_SHARED_DEFAULTS, **_DEFAULTS[comp]}
    values.update({k: v for k, v in data.items() if v is not None and not k.startswith("_")})
    for name in _INT_FIELDS:
        if name in values and (isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 1):
            raise CheckpointError(f"{path}: {name} must be a positive integer, got {values[name]!r}")
    for name in ("rope_theta", "rms_norm_eps", "attention_dropout"):
        if isinstance(values[name], bool) or not isinstance(values[name], int | float):
            raise CheckpointError(f"{path}: {name} must be a number, got {values[name]!r}")
    return _Loaded(comp, path, values)


def _check_model_index(root: Path) -> None:
    path = root / MODEL_INDEX
    if not path.is_file():
        return
    index = _read_json(path)
    if index.get("_class_name") != PIPELINE_CLASS:
        raise CheckpointError(f"{path}: _class_name {index.get('_class_name')!r}, expected {PIPELINE_CLASS!r}")
    for comp in COMPONENTS:
        entry = index.get(comp.folder)
        if entry is None or entry == [None, None]:
            raise CheckpointError(f"{path}: lists no {comp.folder} component ({comp.class_name}), which the DiT needs")
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] == comp.class_name):
            raise CheckpointError(f"{path}: {comp.folder} is {entry!r}, expected class {comp.class_name!r}")


def _check_same(loaded: list[_Loaded], names: tuple[str, ...], what: str) -> None:
    """Every component in `loaded` agrees with the first on each field in `names`."""
    ref = loaded[0]
    for other in loaded[1:]:
        for name in names:
            if other[name] != ref[name]:
                raise CheckpointError(
                    f"{other.path}: {name} = {other[name]!r} but {ref.path.parent.name} has {ref[name]!r} ({what})"
                )


def _default_layer_types(n: int) -> tuple[str, ...]:
    return tuple(_LAYER_TYPES[i % 2] for i in range(n))


def _layer_types(item: _Loaded, n: int) -> tuple[str, ...]:
    given = item["layer_types"]
    if given is None:
        return _default_layer_types(n)
    if not isinstance(given, list) or len(given) != n or any(t not in _LAYER_TYPES for t in given):
        raise CheckpointError(f"{item.path}: layer_types must list {n} of {', '.join(_LAYER_TYPES)}, got {given!r}")
    return tuple(given)


def _check_layer_types(cfg: DiTConfig, loaded: dict[Component, _Loaded]) -> None:
    """Our encoder stacks take layer i's type from the transformer's layer_types; each diffusers stack
    must agree (the timbre encoder always uses the default pattern there)."""
    ce, tk, dt = loaded[CONDITION_ENCODER], loaded[AUDIO_TOKENIZER], loaded[AUDIO_DETOKENIZER]
    n_pool = tk["num_attention_pooler_hidden_layers"]
    stacks = (
        (ce, "lyric encoder", _layer_types(ce, ce["num_lyric_encoder_hidden_layers"])),
        (ce, "timbre encoder", _default_layer_types(ce["num_timbre_encoder_hidden_layers"])),
        (tk, "attention pooler", _layer_types(tk, n_pool)),
        (dt, "detokenizer", _layer_types(dt, dt["num_attention_pooler_hidden_layers"])),
    )
    for item, name, types in stacks:
        if types != tuple(cfg.layer_types[: len(types)]):
            raise CheckpointError(
                f"{item.path}: the {name}'s layer types {list(types)} differ from the transformer's "
                f"{list(cfg.layer_types[: len(types)])}, which this DiT uses for every stack"
            )


def _check_consistent(loaded: dict[Component, _Loaded], xl: bool) -> None:
    tr, ce, tk, dt = (loaded[c] for c in COMPONENTS)
    everyone = [tr, ce, tk, dt]
    _check_same(everyone, ("head_dim", "rope_theta", "rms_norm_eps", "sliding_window"), "shared by every stack")
    _check_same([ce, tk, dt], ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"), "encoder side")
    _check_same([tr, tk, dt], ("audio_acoustic_hidden_dim",), "latent channels")
    _check_same([tk, dt], ("pool_window_size", "num_attention_pooler_hidden_layers"), "tokenizer/detokenizer")
    if not xl:
        _check_same([tr, ce], ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"), "2B sizes")
    enc = tr["encoder_hidden_size"]
    if enc is not None and enc != ce["hidden_size"]:
        raise CheckpointError(f"{tr.path}: encoder_hidden_size {enc} but condition_encoder hidden_size is {ce['hidden_size']}")
    for item in everyone:
        if item["attention_bias"]:
            raise CheckpointError(f"{item.path}: attention_bias is true; ACE-Step attention has no biases")
    levels = tk["fsq_input_levels"]
    if not isinstance(levels, list) or not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in levels):
        raise CheckpointError(f"{tk.path}: fsq_input_levels must be a list of integers >= 2, got {levels!r}")


def config_from_components(loaded: dict[Component, _Loaded]) -> DiTConfig:
    """Our (upstream-named) DiTConfig from the four component configs; inconsistencies raise naming the file."""
    tr, ce, tk = loaded[TRANSFORMER], loaded[CONDITION_ENCODER], loaded[AUDIO_TOKENIZER]
    version = tr["model_version"]
    xl = ce["hidden_size"] != tr["hidden_size"] or str(version or "").lower().startswith("xl")
    _check_consistent(loaded, xl)
    fields: dict[str, Any] = {k: tr[k] for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "in_channels", "audio_acoustic_hidden_dim", "patch_size", "rope_theta", "attention_dropout",
        "rms_norm_eps", "sliding_window", "model_version",
    )}
    fields.update({k: ce[k] for k in (
        "text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers",
    )})
    fields.update({k: tk[k] for k in (
        "pool_window_size", "fsq_dim", "fsq_input_levels", "fsq_input_num_quantizers", "num_attention_pooler_hidden_layers",
    )})
    fields.update(
        layer_types=_layer_types(tr, tr["num_hidden_layers"]),
        use_sliding_window=True,  # diffusers has no switch: sliding layers always use the window
        attention_bias=False,
        # AceStepPipeline's rule, widened to the xl_* versions
        is_turbo=bool(tr["is_turbo"]) or str(version or "").endswith("turbo"),
    )
    if xl:
        fields.update(
            encoder_hidden_size=ce["hidden_size"],
            encoder_intermediate_size=ce["intermediate_size"],
            encoder_num_attention_heads=ce["num_attention_heads"],
            encoder_num_key_value_heads=ce["num_key_value_heads"],
        )
    fields.update(_extra_fields(tr))
    try:
        check_field_types(DiTConfig, fields)
    except TypeError as e:
        raise CheckpointError(f"{tr.path}: {e}") from e
    cfg = DiTConfig(**fields)
    _check_layer_types(cfg, loaded)
    return cfg


def _extra_fields(tr: _Loaded) -> dict[str, Any]:
    """`EXTRA_FIELDS` present in the transformer's config (checked), else left to the defaults."""
    out = {name: tr.values[name] for name in EXTRA_FIELDS if name in tr.values}
    frames = out.get("timbre_fix_frame")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        raise CheckpointError(f"{tr.path}: timbre_fix_frame must be a positive integer, got {frames!r}")
    for name in EXTRA_FIELDS[1:]:
        if name in out and (isinstance(out[name], bool) or not isinstance(out[name], int | float)):
            raise CheckpointError(f"{tr.path}: {name} must be a number, got {out[name]!r}")
    return out


# --------------------------------------------------------------------------------------------
# Files, detection, plan
# --------------------------------------------------------------------------------------------
def component_files(folder: Path) -> list[Path]:
    """The safetensors files of one component folder, in index order."""
    try:
        return weight_files(folder, WEIGHTS_NAME, INDEX_NAME)
    except CheckpointError as e:
        found = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        if not found or (folder / INDEX_NAME).is_file():
            raise
        raise CheckpointError(f"{e} (found {', '.join(found)}; pickled .bin and variant files are not read)") from None


def _config_class(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def is_diffusers_layout(folder: Path) -> bool:
    """A diffusers repository root (model_index.json, or a transformer/ component), or one of its
    DiT component folders (so `plan` can say which folder to pass instead)."""
    folder = Path(folder)
    own = folder / CONFIG_NAME
    if own.is_file():
        return _config_class(own) in _BY_CLASS
    return (folder / MODEL_INDEX).is_file() or (folder / TRANSFORMER.folder / CONFIG_NAME).is_file()


def plan(folder: Path) -> tuple[DiTConfig, list[Path], KeyMap]:
    """(our DiTConfig, the weight files of the four DiT components, the key map) for a diffusers repo."""
    root = Path(folder)
    own = _config_class(root / CONFIG_NAME)
    if own in _BY_CLASS:
        raise CheckpointError(
            f"{root}: this is the {_BY_CLASS[own].folder} component of a diffusers repository; "
            f"load the repository root ({root.parent}) instead"
        )
    _check_model_index(root)
    loaded = {comp: _load_component_config(root, comp) for comp in COMPONENTS}
    config = config_from_components(loaded)
    files = [f for comp in COMPONENTS for f in component_files(root / comp.folder)]
    log.info("%s: diffusers layout, %d weight files, %s", root, len(files), "XL" if config.is_xl else "2B")
    return config, files, KeyMap()


def read_silence_latent(folder: str | Path) -> torch.Tensor | None:
    """The `silence_latent` the converter bakes into condition_encoder, as float32 [1, N, 64]
    (already time-major, like `models.vae.load_silence_latent`'s result), or None if absent."""
    comp_dir = Path(folder) / CONDITION_ENCODER.folder
    for path in component_files(comp_dir):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                if SILENCE_KEY in f.keys():
                    value = f.get_tensor(SILENCE_KEY)
                    break
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    else:
        return None
    if value.dim() != 3 or value.shape[0] != 1 or value.shape[1] == 0 or not value.is_floating_point():
        raise CheckpointError(f"{path}: silence_latent must be a float tensor [1, N, C], got {tuple(value.shape)} {value.dtype}")
    return value.float().contiguous()
