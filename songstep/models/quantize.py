"""Weight-only quantization of the DiT decoder through torchao (the `[quant]` extra).

`quantize_dit(model, "int8")` replaces the weights of every linear layer inside the decoder's
transformer layers (attention projections, cross-attention projections, MLPs: nearly all of its
parameters) by int8 weights with a per-channel scale; activations stay in the model dtype. The
timestep embedders, condition projection, patch convs, the condition encoder and the audio
tokenizers keep their weights.
"""

from __future__ import annotations

import logging

from torch import nn

from songstep.errors import InvalidRequest, SongstepError

log = logging.getLogger(__name__)

MODES = ("int8",)


def _torchao_config(mode: str):
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise SongstepError(f"quantize={mode!r} needs torchao: pip install 'songstep[quant]'") from e
    return quantize_, Int8WeightOnlyConfig()


def quantize_dit(model, mode: str = "int8") -> int:
    """Quantize the decoder layers' linears in place; returns how many were replaced."""
    if mode not in MODES:
        raise InvalidRequest(f"unknown quantization {mode!r}; choose from: {', '.join(MODES)}")
    quantize_, config = _torchao_config(mode)
    names = [n for n, m in model.decoder.named_modules() if isinstance(m, nn.Linear) and n.startswith("layers.")]
    quantize_(model.decoder, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.startswith("layers."))
    log.info("DiT decoder: %d linears quantized to %s weight-only", len(names), mode)
    return len(names)
