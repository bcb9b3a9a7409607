"""Adapters (LoRA, LoKr) on the DiT decoder, through peft: load, scale, disable, unload, save.

Adapters live only on `DiTModel.decoder` (upstream's trainer applies peft there), as peft layers
injected in place, so the decoder keeps its own module names. The formats read:

* peft folders: `adapter_config.json` + `adapter_model.safetensors`, keys like
  `base_model.model.layers.0.self_attn.q_proj.lora_A.weight` (upstream's trainer, and what
  `save_adapter` writes); LoRA and LoKr configs;
* single `.safetensors` files in diffusers' spelling (`transformer.layers.0.self_attn.q_proj.lora_A.weight`,
  `….lora.down.weight`) and ComfyUI / kohya / LyCORIS spelling
  (`lora_unet_layers_0_self_attn_q_proj.lora_down.weight`, `….alpha`, `….lokr_w1`); the rank,
  alpha and LoKr factorisation are read from the tensors.

Strict: a key that names no decoder Linear, a suffix peft cannot hold (e.g. LyCORIS `dora_scale`),
a missing tensor or a wrong shape is a `CheckpointError` naming the keys; the adapter is then
removed again. Pickle files are refused. A scale only changes peft's per-adapter `scaling`; base
weights are never merged or touched. An adapter at scale 0 or disabled is skipped in the forward,
so the output equals the model without it bit for bit.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from songstep.errors import CheckpointError, InvalidRequest

log = logging.getLogger(__name__)

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")  # upstream's default targets (self + cross attention)
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LOKR_PARAMS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LORA_PARAMS = ("lora_A", "lora_B")
_REGISTRY = "_songstep_adapters"

# file spelling of a key's tail → peft's spelling (None: the alpha scalar, read into the config)
_SUFFIXES: dict[str, str | None] = {
    "lora_A.weight": "lora_A.weight",
    "lora_B.weight": "lora_B.weight",
    "lora_down.weight": "lora_A.weight",
    "lora_up.weight": "lora_B.weight",
    "lora.down.weight": "lora_A.weight",
    "lora.up.weight": "lora_B.weight",
    "alpha": None,
    **{name: name for name in LOKR_PARAMS},
}
_PREFIX = re.compile(
    r"^(?:(?:base_model_model|diffusion_model|transformer|model|lora_unet|lora_transformer|lycoris)_)*(?:decoder_)?"
)


@dataclass
class Adapter:
    name: str
    path: str
    kind: str  # "lora" | "lokr"
    scale: float = 1.0
    enabled: bool = True
    trainable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "scale": self.scale, "enabled": self.enabled}


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is in the [train] extra
        raise InvalidRequest("adapters need peft: pip install 'songstep[train]'") from e
    return peft


def adapters(dit) -> dict[str, Adapter]:
    """The adapters attached to a DiT, by name, in load order."""
    reg = getattr(dit.decoder, _REGISTRY, None)
    if reg is None:
        reg = {}
        setattr(dit.decoder, _REGISTRY, reg)
    return reg


def _tuner_layers(decoder: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in decoder.modules() if isinstance(m, BaseTunerLayer)]


def adapter_name_for(dit, path: str | Path) -> str:
    """A free adapter name from a file or folder name (peft names cannot hold dots)."""
    stem = Path(str(path)).name.removesuffix(".safetensors")
    base = re.sub(r"\W", "_", stem) or "adapter"
    if base[0].isdigit() or base in ("base_layer", "default_0"):
        base = f"a_{base}"
    name, i = base, 1
    while name in adapters(dit):
        i += 1
        name = f"{base}_{i}"
    return name


# -- injection and activation ------------------------------------------------------------------
def add_adapter(dit, config, name: str = "default", *, path: str = "", trainable: bool = False) -> Adapter:
    """Inject a fresh peft adapter (a `LoraConfig` or `LoKrConfig`) into the decoder."""
    peft = _peft()
    if name in adapters(dit):
        raise InvalidRequest(f"an adapter named {name!r} is already loaded")
    decoder = dit.decoder
    training = decoder.training
    try:
        with warnings.catch_warnings():  # "Already found a peft_config attribute": several adapters are intended
            warnings.simplefilter("ignore", UserWarning)
            peft.inject_adapter_in_model(config, decoder, adapter_name=name)
    except ValueError as e:
        raise CheckpointError(f"{path or name}: cannot attach the adapter ({e})") from e
    decoder.train(training)
    kind = "lokr" if type(config).__name__ == "LoKrConfig" else "lora"
    entry = Adapter(name, str(path), kind, trainable=trainable)
    adapters(dit)[name] = entry
    _activate(dit)
    return entry


def _activate(dit) -> None:
    """Make exactly the enabled, non-zero-scale adapters active in every peft layer; only
    trainable adapters keep gradients."""
    reg = adapters(dit)
    live = [n for n, a in reg.items() if a.enabled and a.scale != 0.0]
    for layer in _tuner_layers(dit.decoder):
        present = set(layer.scaling)
        layer.set_adapter([n for n in live if n in present])
    for name, entry in reg.items():
        for p in adapter_parameters(dit, name).values():
            p.requires_grad_(entry.trainable)


def adapter_parameters(dit, name: str) -> dict[str, nn.Parameter]:
    """One adapter's parameters under peft's saved names (`base_model.model.<module>.lora_A.weight`)."""
    out = {}
    for key, p in dit.decoder.named_parameters():
        canon = canonical_key(key, name)
        if canon is not None:
            out[canon] = p
    return out


def canonical_key(param_name: str, adapter: str) -> str | None:
    """`layers.0.self_attn.q_proj.base_layer.lora_A.<adapter>.weight` → peft's file key, or None
    when the parameter belongs to another adapter or the base model."""
    parts = param_name.split(".")
    for i in range(len(parts) - 1):
        if parts[i] in LORA_PARAMS + LOKR_PARAMS and parts[i + 1] == adapter:
            module = [p for p in parts[:i] if p != "base_layer"]
            return PEFT_PREFIX + ".".join([*module, parts[i], *parts[i + 2 :]])
    return None


# -- scale / enable / unload ---------------------------------------------------------------------
def _selected(dit, name: str | None) -> list[Adapter]:
    reg = adapters(dit)
    if name is None:
        return list(reg.values())
    if name not in reg:
        raise InvalidRequest(f"no adapter named {name!r} (loaded: {', '.join(reg) or 'none'})")
    return [reg[name]]


def set_scale(dit, scale: float, name: str | None = None) -> None:
    """Scale one adapter (or all): peft's `scaling = scale · alpha / r`; base weights untouched."""
    scale = float(scale)
    if not torch.isfinite(torch.tensor(scale)):
        raise InvalidRequest(f"adapter scale must be finite, got {scale}")
    for entry in _selected(dit, name):
        entry.scale = scale
        for layer in _tuner_layers(dit.decoder):
            if entry.name in layer.scaling:
                layer.set_scale(entry.name, scale)
    _activate(dit)


def set_enabled(dit, enabled: bool, name: str | None = None) -> None:
    for entry in _selected(dit, name):
        entry.enabled = bool(enabled)
    _activate(dit)


def unload(dit, name: str | None = None) -> None:
    """Remove one adapter (or all); once a layer holds none, the plain Linear is put back."""
    decoder = dit.decoder
    for entry in _selected(dit, name):
        for layer in _tuner_layers(decoder):
            if entry.name in layer.scaling:
                layer.delete_adapter(entry.name)
        getattr(decoder, "peft_config", {}).pop(entry.name, None)
        del adapters(dit)[entry.name]
    _restore_plain_layers(decoder)
    if not adapters(dit) and hasattr(decoder, "peft_config"):
        del decoder.peft_config
    _activate(dit)


def _restore_plain_layers(decoder: nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    changed = True
    while changed:
        changed = False
        for parent in list(decoder.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer) and not child.scaling:
                    setattr(parent, child_name, child.base_layer)
                    changed = True


def status(dit) -> list[dict[str, Any]]:
    return [a.to_dict() for a in adapters(dit).values()]


# -- reading files ---------------------------------------------------------------------------------
def _linear_modules(decoder: nn.Module) -> dict[str, str]:
    """Flattened spelling (dots → underscores) → module name, for every decoder Linear."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, m in decoder.named_modules():
        if isinstance(m, nn.Linear) and not isinstance(m, BaseTunerLayer) and "lora_" not in name:
            clean = ".".join(p for p in name.split(".") if p != "base_layer")
            out[clean.replace(".", "_")] = clean
    return out


def split_key(key: str, modules: dict[str, str]) -> tuple[str, str | None] | None:
    """A file key in any supported spelling → (decoder module name, peft suffix or None for
    alpha); None when the key fits no decoder Linear."""
    for spelling in sorted(_SUFFIXES, key=len, reverse=True):
        if key.endswith("." + spelling):
            flat = _PREFIX.sub("", key[: -len(spelling) - 1].replace(".", "_"))
            module = modules.get(flat)
            return None if module is None else (module, _SUFFIXES[spelling])
    return None


def read_adapter_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: adapters are read from .safetensors files only")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e


def _group(dit, tensors: dict[str, torch.Tensor], where: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {peft suffix or "alpha": tensor}}; unknown keys raise naming them."""
    modules = _linear_modules(dit.decoder)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        hit = split_key(key, modules)
        if hit is None:
            unknown.append(key)
            continue
        module, suffix = hit
        grouped.setdefault(module, {})[suffix or "alpha"] = value
    if unknown:
        raise CheckpointError(f"{where}: keys that fit no DiT decoder Linear: {_preview(sorted(unknown))}")
    if not grouped:
        raise CheckpointError(f"{where}: no adapter tensors")
    return grouped


def _preview(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _patterns(values: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The most common value, plus per-module exceptions as (escaped) peft patterns."""
    common = max(set(values.values()), key=list(values.values()).count)
    return common, {re.escape(m): v for m, v in values.items() if v != common}


def _lora_config(grouped: dict[str, dict[str, torch.Tensor]], where: Path):
    peft = _peft()
    ranks, alphas = {}, {}
    for module, parts in grouped.items():
        if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
            raise CheckpointError(f"{where}: {module} needs both LoRA down and up weights, has {sorted(parts)}")
        ranks[module] = int(parts["lora_A.weight"].shape[0])
        alphas[module] = float(parts["alpha"].float().item()) if "alpha" in parts else float(ranks[module])
    r, rank_pattern = _patterns(ranks)
    alpha, alpha_pattern = _patterns(alphas)
    return peft.LoraConfig(r=int(r), lora_alpha=alpha, target_modules=sorted(grouped), rank_pattern=rank_pattern,
                           alpha_pattern=alpha_pattern, lora_dropout=0.0, bias="none")


def _lokr_shapes(in_dim: int, out_dim: int, r: int, factor: int, both: bool) -> dict[str, tuple[int, ...]]:
    """peft's LoKr parameter shapes for a Linear (its `update_layer` rule)."""
    from peft.tuners.lokr.layer import factorization

    in_m, in_n = factorization(in_dim, factor)
    out_l, out_k = factorization(out_dim, factor)
    shapes = {}
    if not (both and r < max(out_l, in_m) / 2):
        shapes["lokr_w1"] = (out_l, in_m)
    else:
        shapes.update(lokr_w1_a=(out_l, r), lokr_w1_b=(r, in_m))
    if not r < max(out_k, in_n) / 2:
        shapes["lokr_w2"] = (out_k, in_n)
    else:
        shapes.update(lokr_w2_a=(out_k, r), lokr_w2_b=(r, in_n))
    return shapes


def _lokr_config(dit, grouped: dict[str, dict[str, torch.Tensor]], where: Path):
    """Find the rank / factor / decompose_both for which peft's LoKr shapes equal the file's."""
    peft = _peft()
    module, parts = next(iter(grouped.items()))
    linear = dit.decoder.get_submodule(module)
    linear = getattr(linear, "base_layer", linear)
    got = {k: tuple(v.shape) for k, v in parts.items() if k != "alpha"}
    low = [v.shape[1] for k, v in parts.items() if k in ("lokr_w1_a", "lokr_w2_a")]
    full_rank = max(max(s) for s in got.values())
    dims = {d for s in got.values() for d in s}
    for r in low or [full_rank]:
        for factor in [-1, *sorted(dims)]:
            for both in (False, True):
                if _lokr_shapes(linear.in_features, linear.out_features, r, factor, both) == got:
                    alpha = float(parts["alpha"].float().item()) if "alpha" in parts and low else float(r)
                    return peft.LoKrConfig(r=int(r), alpha=alpha, decompose_factor=factor, decompose_both=both,
                                           target_modules=sorted(grouped))
    raise CheckpointError(f"{where}: LoKr tensors of {module} {got} fit no peft LoKr layout")


def _config_from_folder(folder: Path):
    peft = _peft()
    try:
        data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        config = peft.get_peft_config(data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME}: unreadable adapter config ({e})") from e
    if type(config).__name__ not in ("LoraConfig", "LoKrConfig"):
        raise CheckpointError(f"{folder}: peft type {data.get('peft_type')!r} is not supported (LoRA or LoKr)")
    return config


def _read(dit, path: Path):
    """(peft config, {module: {suffix: tensor}}) for a peft folder or a single safetensors file."""
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: no {CONFIG_NAME} (a peft adapter folder has it)")
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME} (adapters are read from safetensors only)")
        grouped = _group(dit, read_adapter_file(weights), weights)
        return _config_from_folder(path), grouped
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter file or folder")
    grouped = _group(dit, read_adapter_file(path), path)
    lokr = {any(k.startswith("lokr_") for k in parts) for parts in grouped.values()}
    if len(lokr) > 1:
        raise CheckpointError(f"{path}: mixes LoRA and LoKr tensors")
    config = _lokr_config(dit, grouped, path) if lokr.pop() else _lora_config(grouped, path)
    return config, grouped


def load_tensors(dit, name: str, grouped: dict[str, dict[str, torch.Tensor]], where: str) -> None:
    """Copy an adapter's tensors in: every key present, none extra, every shape equal."""
    params = adapter_parameters(dit, name)
    given = {f"{PEFT_PREFIX}{m}.{s}": t for m, parts in grouped.items() for s, t in parts.items() if s != "alpha"}
    missing, extra = sorted(set(params) - set(given)), sorted(set(given) - set(params))
    problems = []
    if missing:
        problems.append(f"missing tensors {_preview(missing)}")
    if extra:
        problems.append(f"unexpected tensors {_preview(extra)}")
    problems += [
        f"tensor {k!r} has shape {list(given[k].shape)}, expected {list(params[k].shape)}"
        for k in sorted(set(params) & set(given)) if given[k].shape != params[k].shape
    ]
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(given[k].to(p.dtype))


def load_adapter(dit, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
    """Attach an adapter from a peft folder or a diffusers / ComfyUI safetensors file; returns
    its name. On any error nothing stays attached."""
    path = Path(str(path)).expanduser()
    config, grouped = _read(dit, path)
    name = name or adapter_name_for(dit, path)
    config.inference_mode = False
    add_adapter(dit, config, name, path=str(path))
    try:
        load_tensors(dit, name, grouped, str(path))
        set_scale(dit, scale, name)
    except Exception:
        unload(dit, name)
        raise
    log.info("loaded adapter %s (%s) from %s at scale %g", name, adapters(dit)[name].kind, path, scale)
    return name


def save_adapter(dit, folder: str | Path, name: str = "default") -> Path:
    """Write one adapter as a peft folder (`adapter_config.json` + `adapter_model.safetensors`)."""
    from safetensors.torch import save_file

    if name not in adapters(dit):
        raise InvalidRequest(f"no adapter named {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = dit.decoder.peft_config[name]
    config.save_pretrained(str(folder))
    tensors = {k: p.detach().float().cpu().contiguous() for k, p in adapter_parameters(dit, name).items()}
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / WEIGHTS_NAME)
    return folder


# -- front ends ----------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, float]:
    """`PATH[:SCALE]` → (path, scale); a tail that is not a number belongs to the path."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def apply_loras(pipe, specs) -> list[str]:
    """Load every `PATH[:SCALE]` spec onto a pipeline (the CLI's repeatable `--lora`)."""
    return [pipe.load_lora(path, scale) for path, scale in map(parse_spec, specs or [])]


class LoraMixin:
    """Pipeline methods over the DiT's adapters (`self.components.dit`, serialised by `self._lock`)."""

    def load_lora(self, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
        with self._lock:
            return load_adapter(self.components.dit, path, scale, name)

    def set_lora_scale(self, scale: float, name: str | None = None) -> None:
        with self._lock:
            set_scale(self.components.dit, scale, name)

    def disable_lora(self, name: str | None = None) -> None:
        with self._lock:
            set_enabled(self.components.dit, False, name)

    def enable_lora(self, name: str | None = None) -> None:
        with self._lock:
            set_enabled(self.components.dit, True, name)

    def unload_lora(self, name: str | None = None) -> None:
        with self._lock:
            unload(self.components.dit, name)

    def lora_status(self) -> list[dict[str, Any]]:
        return status(self.components.dit)
