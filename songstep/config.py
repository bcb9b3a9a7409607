"""Configuration as data: frozen dataclasses read from a checkpoint's `config.json`.

Field names are upstream's (`AceStepConfig`), so a config.json from the hub maps 1:1.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from songstep.errors import CheckpointError

MODEL_TYPE = "acestep"


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field annotation (int is not bool; float takes int; tuples
    take lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_type_ok(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, int if hint is int else int | float) and not isinstance(value, bool)
    return not isinstance(hint, type) or isinstance(value, hint)


def check_field_types(cls: type, data: dict[str, Any]) -> None:
    """`TypeError` naming the first field of `data` whose value does not fit `cls`'s annotation."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name in hints and name != "extra" and not _type_ok(value, hints[name]):
            raise TypeError(f"field {name!r} must be {hints[name]}, got {value!r}")


def _default_layer_types(n: int) -> tuple[str, ...]:
    return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n))


@dataclass(frozen=True)
class DiTConfig:
    """Every field the network reads; defaults are the 2B turbo values."""

    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    encoder_hidden_size: int | None = None
    encoder_intermediate_size: int | None = None
    encoder_num_attention_heads: int | None = None
    encoder_num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    attention_dropout: float = 0.0
    use_sliding_window: bool = True
    sliding_window: int = 128
    layer_types: tuple[str, ...] | None = None
    in_channels: int = 192
    audio_acoustic_hidden_dim: int = 64
    patch_size: int = 2
    pool_window_size: int = 5
    fsq_dim: int = 2048
    fsq_input_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    fsq_input_num_quantizers: int = 1
    text_hidden_dim: int = 1024
    timbre_hidden_dim: int = 64
    num_lyric_encoder_hidden_layers: int = 8
    num_timbre_encoder_hidden_layers: int = 4
    num_attention_pooler_hidden_layers: int = 2
    timbre_fix_frame: int = 750
    timestep_mu: float = -0.4
    timestep_sigma: float = 1.0
    data_proportion: float = 0.5
    is_turbo: bool = True
    model_version: str | None = "turbo"
    model_type: str = MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", _default_layer_types(self.num_hidden_layers))
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "fsq_input_levels", tuple(int(x) for x in self.fsq_input_levels))

    # -- derived sizes ---------------------------------------------------------------
    @property
    def is_xl(self) -> bool:
        """XL paths apply exactly when `encoder_hidden_size` is present and non-null."""
        return self.encoder_hidden_size is not None

    @property
    def enc_hidden(self) -> int:
        return self.encoder_hidden_size if self.is_xl else self.hidden_size

    @property
    def enc_intermediate(self) -> int:
        v = self.encoder_intermediate_size if self.is_xl else None
        return v if v is not None else self.intermediate_size

    @property
    def enc_heads(self) -> int:
        v = self.encoder_num_attention_heads if self.is_xl else None
        return v if v is not None else self.num_attention_heads

    @property
    def enc_kv_heads(self) -> int:
        v = self.encoder_num_key_value_heads if self.is_xl else None
        return v if v is not None else self.num_key_value_heads

    def layer_is_sliding(self, i: int) -> bool:
        return self.use_sliding_window and self.layer_types[i] == "sliding_attention"

    # -- IO ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        if isinstance(known.get("layer_types"), list):
            known["layer_types"] = tuple(known["layer_types"])
        if known.get("is_turbo") is None:
            known.pop("is_turbo", None)
        check_field_types(cls, known)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["layer_types"] = list(out["layer_types"])
        out["fsq_input_levels"] = list(out["fsq_input_levels"])
        out["architectures"] = ["AceStepConditionGenerationModel"]
        return {**self.extra, **out}

    @classmethod
    def from_file(cls, path: str | Path) -> DiTConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CheckpointError(f"{path}: config.json not found") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable config.json ({e})") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: config.json must hold a JSON object")
        model_type = data.get("model_type")
        if model_type != MODEL_TYPE:
            raise CheckpointError(
                f"{path}: unknown model_type {model_type!r}; expected {MODEL_TYPE!r} (an ACE-Step 1.5 DiT)"
            )
        try:
            return cls.from_dict(data)
        except TypeError as e:
            raise CheckpointError(f"{path}: invalid config.json ({e})") from e


# Full-size presets. `variant` names as users type them.
_XL = dict(
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=32,
    num_attention_heads=32,
    encoder_hidden_size=2048,
    encoder_intermediate_size=6144,
    encoder_num_attention_heads=16,
    encoder_num_key_value_heads=8,
)

VARIANT_PRESETS: dict[str, dict[str, Any]] = {
    "turbo": dict(is_turbo=True, model_version="turbo"),
    "turbo-shift1": dict(is_turbo=True, model_version="turbo"),
    "turbo-shift3": dict(is_turbo=True, model_version="turbo"),
    "turbo-continuous": dict(is_turbo=True, model_version="turbo"),
    "base": dict(is_turbo=False, model_version="base"),
    "sft": dict(is_turbo=False, model_version="sft"),
    "xl-turbo": dict(_XL, is_turbo=True, model_version="xl_turbo"),
    "xl-base": dict(_XL, is_turbo=False, model_version="xl_base"),
    "xl-sft": dict(_XL, is_turbo=False, model_version="xl_sft"),
}


VARIANTS = tuple(VARIANT_PRESETS)  # the one variant table, as users type the names


def preset(variant: str) -> DiTConfig:
    """The full-size config of a named variant."""
    try:
        return DiTConfig(**VARIANT_PRESETS[variant])
    except KeyError:
        raise KeyError(f"unknown variant {variant!r}; known: {', '.join(VARIANT_PRESETS)}") from None


def tiny_config(xl: bool = False, is_turbo: bool = True, **overrides: Any) -> DiTConfig:
    """The fixtures' tiny profile (the fixtures README, section 2.2): builds in milliseconds."""
    base: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,
        text_hidden_dim=32,
        timbre_hidden_dim=64,
        fsq_dim=64,
        num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2,
        num_attention_pooler_hidden_layers=2,
        timbre_fix_frame=30,
        is_turbo=is_turbo,
        model_version=("xl_" if xl else "") + ("turbo" if is_turbo else "base"),
    )
    if xl:
        base.update(
            hidden_size=72,
            num_attention_heads=6,
            encoder_hidden_size=64,
            encoder_intermediate_size=128,
            encoder_num_attention_heads=4,
            encoder_num_key_value_heads=2,
        )
    base.update(overrides)
    return DiTConfig(**base)


@dataclass(frozen=True)
class VariantDefaults:
    """Sampler defaults of one model family, read from the checkpoint's config (`is_turbo`), never
    from its name: turbo runs its 8-entry table without CFG, with the wavelet correction (DCW) on;
    base and sft run 32 steps of CFG (APG, scale 7.0) with DCW off (it spoils their output, as
    upstream found and fixed). Values a user gives always win."""

    family: str
    steps: int
    shift: float
    guidance: float
    dcw: bool
    solver: str
    max_steps: int

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "shift": self.shift, "guidance": self.guidance, "dcw": self.dcw, "solver": self.solver}


# the one per-family defaults table
FAMILY_DEFAULTS = {
    "turbo": VariantDefaults("turbo", steps=8, shift=3.0, guidance=1.0, dcw=True, solver="euler", max_steps=20),
    "base": VariantDefaults("base", steps=32, shift=3.0, guidance=7.0, dcw=False, solver="euler", max_steps=200),
    "sft": VariantDefaults("sft", steps=32, shift=3.0, guidance=7.0, dcw=False, solver="euler", max_steps=200),
}
TURBO_DEFAULTS = FAMILY_DEFAULTS["turbo"]
CFG_DEFAULTS = FAMILY_DEFAULTS["base"]

# checkpoints distilled at one shift (their config.json equals turbo's, so the name decides)
SHIFT_BY_VARIANT = {"turbo-shift1": 1.0, "turbo-shift3": 3.0}


def family(config: DiTConfig) -> str:
    """turbo, base or sft, from the config (`is_turbo`, then `model_version`)."""
    if config.is_turbo:
        return "turbo"
    return "sft" if "sft" in str(config.model_version or "") else "base"


def variant_defaults(config: DiTConfig, variant: str | None = None) -> VariantDefaults:
    """The family's defaults; a checkpoint distilled at one shift defaults to that shift
    (upstream's UI uses 3.0 for every turbo file, which runs turbo-shift1 off its training
    shift; pass `shift=3.0` for that)."""
    base = FAMILY_DEFAULTS[family(config)]
    if variant in SHIFT_BY_VARIANT:
        return dataclasses.replace(base, shift=SHIFT_BY_VARIANT[variant])
    return base
