"""25 Hz latents ↔ 5 Hz audio codes: the audio tokenizer (projection, attention pooler, residual
FSQ with levels [8,8,8,5,5,5]) and the detokenizer.

The FSQ follows vector-quantize-pytorch's `ResidualFSQ` inference path (symmetry-preserving levels,
hard clamp, soft-clamp of the projected input by tanh(x/c)·c with c = 1 + 1/(L-1)); its constants are
non-persistent buffers that take the model dtype, so in bf16 c rounds to 1.140625 as upstream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from songstep.config import DiTConfig
from songstep.models.blocks import EncoderStack
from songstep.models.encoders import AttentionPooler


class FSQ(nn.Module):
    """One finite scalar quantizer (preserve_symmetry, hard clamp); rounding in fp32."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int32), persistent=False)
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int32), persistent=False)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def reset_buffers(self, device: torch.device) -> None:
        self._levels = torch.tensor(self.levels, dtype=torch.int32, device=device)
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self._basis = torch.tensor(basis, dtype=torch.int32, device=device)

    def _code_of_level(self, k: torch.Tensor) -> torch.Tensor:
        lm1 = (self._levels - 1).to(torch.float32)
        return (2.0 / lm1) * k - 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [..., d] → (codes in z's dtype, indices int32 [...])."""
        dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.to(torch.float32).clamp(-1.0, 1.0)
            lm1 = (self._levels - 1).to(torch.float32)
            k = torch.floor(lm1 * (zf + 1.0) / 2.0 + 0.5)
            codes = self._code_of_level(k)
            idx = (k.to(torch.int64) * self._basis.to(torch.int64)).sum(dim=-1).to(torch.int32)
        return codes.to(dtype), idx

    def codes_from_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [...] → codes fp32 [..., d] (the implicit codebook rows)."""
        idx = idx.to(torch.int64)[..., None]
        k = (idx // self._basis.to(torch.int64)) % self._levels.to(torch.int64)
        return self._code_of_level(k.to(torch.float32))


class ResidualFSQ(nn.Module):
    def __init__(self, dim: int, levels: tuple[int, ...], num_quantizers: int) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.num_quantizers = num_quantizers
        d = len(levels)
        self.project_in = nn.Linear(dim, d)
        self.project_out = nn.Linear(d, dim)
        self.layers = nn.ModuleList(FSQ(levels) for _ in range(num_quantizers))
        self.register_buffer("scales", self._scales(None), persistent=False)
        self.register_buffer("soft_clamp_input_value", self._clamp(None), persistent=False)

    def _scales(self, device) -> torch.Tensor:
        lv = torch.tensor(self.levels, dtype=torch.float32, device=device)
        return torch.stack([(lv - 1) ** -float(i) for i in range(self.num_quantizers)])

    def _clamp(self, device) -> torch.Tensor:
        lv = torch.tensor(self.levels, dtype=torch.float32, device=device)
        return 1.0 + 1.0 / (lv - 1.0)

    def reset_buffers(self, device: torch.device, dtype: torch.dtype) -> None:
        self.scales = self._scales(device).to(dtype)
        self.soft_clamp_input_value = self._clamp(device).to(dtype)
        for layer in self.layers:
            layer.reset_buffers(device)

    def forward(self, x: torch.Tensor, fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., dim] → (quantized [..., dim] in x's dtype, indices [..., Q] int32).

        fp32=True runs projections and clamp in fp32 (the XL tokenizer's behaviour); the clamp
        constants keep the values they were rounded to by the model dtype."""
        in_dtype = x.dtype
        dt = torch.float32 if fp32 else in_dtype
        w_in, b_in = self.project_in.weight.to(dt), self.project_in.bias.to(dt)
        z = F.linear(x.to(dt), w_in, b_in)
        c = self.soft_clamp_input_value.to(dt)
        z = (z / c).tanh() * c
        out, residual, indices = 0.0, z, []
        for layer, scale in zip(self.layers, self.scales.to(dt)):
            codes, idx = layer(residual / scale)
            q = codes * scale
            residual = residual - q
            out = out + q
            indices.append(idx)
        w_out, b_out = self.project_out.weight.to(dt), self.project_out.bias.to(dt)
        quantized = F.linear(out, w_out, b_out)
        return quantized.to(in_dtype), torch.stack(indices, dim=-1)

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [..., Q] → quantized [..., dim] in the model dtype."""
        dtype = self.project_out.weight.dtype
        out = 0.0
        for q, (layer, scale) in enumerate(zip(self.layers, self.scales)):
            out = out + layer.codes_from_indices(indices[..., q]).to(dtype) * scale
        return self.project_out(out)


class AudioTokenizer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_acoustic_proj = nn.Linear(cfg.audio_acoustic_hidden_dim, cfg.enc_hidden)
        self.attention_pooler = AttentionPooler(cfg)
        self.quantizer = ResidualFSQ(cfg.fsq_dim, cfg.fsq_input_levels, cfg.fsq_input_num_quantizers)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, T5, W, 64] → pooled [N, T5, E] (the FSQ input)."""
        return self.attention_pooler(self.audio_acoustic_proj(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantizer(self.pool(x), fp32=self.cfg.is_xl)


class AudioTokenDetokenizer(EncoderStack):
    """5 Hz quantized vectors → 25 Hz latents: each code becomes W frames."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg, cfg.enc_hidden, cfg.num_attention_pooler_hidden_layers)
        w, e = cfg.pool_window_size, cfg.enc_hidden
        self.special_tokens = nn.Parameter(torch.zeros(1, w, e))
        self.proj_out = nn.Linear(e, cfg.audio_acoustic_hidden_dim)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        n, t5, e = quantized.shape
        w = self.cfg.pool_window_size
        h = self.embed_tokens(quantized)[:, :, None, :].expand(n, t5, w, e)
        h = (h + self.special_tokens.to(h.dtype)[None]).reshape(n * t5, w, e)
        h = self.proj_out(self.run_layers(h))
        return h.reshape(n, t5 * w, -1)
