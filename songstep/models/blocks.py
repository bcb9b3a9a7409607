"""Building blocks shared by the DiT, the condition encoders and the audio tokenizer.

Semantics follow upstream exactly: Qwen3-style RMSNorm (normalise in fp32, cast back to the
input dtype, then scale), SiLU-gated MLP, default RoPE with a half-split rotation, and attention
with per-head q/k RMSNorm, GQA and optional sliding-window (|i - j| <= window) masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from songstep.models import attention as attn_backend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Rotary(nn.Module):
    """Default RoPE. `inv_freq` is a non-persistent buffer, computed in fp32 and then cast with the
    module (upstream's `.to(bf16)` rounds it)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def _inv_freq(self, device: torch.device | None) -> torch.Tensor:
        idx = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).to(torch.float32)
        return 1.0 / (self.theta ** (idx / self.head_dim))

    def reset_buffers(self, device: torch.device, dtype: torch.dtype) -> None:
        self.inv_freq = self._inv_freq(device).to(dtype)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        with torch.autocast(device_type=pos.device.type, enabled=False):
            freqs = pos[:, None] * self.inv_freq.float()[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Self- or cross-attention with q/k RMSNorm per head and GQA. No biases."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normalised) and values, [B, KV, L, hd]."""
        b, n, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, n, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: attn_backend.Mask | None = None,
    ) -> torch.Tensor:
        """Self-attention when `kv` is None (RoPE applied to q and k); cross-attention on the
        precomputed `kv` otherwise (no RoPE on either side)."""
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        if kv is None:
            k, v = self.project_kv(x)
            if rope is not None:
                cos, sin = rope
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        else:
            k, v = kv
        out = attn_backend.attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    def cross_with_probs(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention on `kv` computed eagerly, also returning the probabilities
        [B, H, Lq, Lk]: `softmax(q·kᵀ·hd^-0.5)` in fp32 (after the GQA key repeat), cast to the
        query dtype — transformers' eager path, which upstream's decoder takes whenever it returns
        attention weights. Only the lyric-alignment pass calls this; sampling uses `forward`."""
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        groups = self.heads // kv[0].shape[1]
        k, v = (t.repeat_interleave(groups, dim=1) if groups > 1 else t for t in kv)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)), probs


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer used by the lyric/timbre encoders, pooler and detokenizer."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, kv_heads, head_dim, eps)
        self.mlp = MLP(dim, hidden)
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope=rope, mask=mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class EncoderStack(nn.Module):
    """`embed_tokens` → layers (sliding/full by `layer_types[i]`) → final norm, with RoPE."""

    def __init__(self, cfg, in_dim: int, num_layers: int) -> None:
        super().__init__()
        e = cfg.enc_hidden
        self.cfg = cfg
        self.embed_tokens = nn.Linear(in_dim, e)
        self.layers = nn.ModuleList(
            EncoderLayer(e, cfg.enc_heads, cfg.enc_kv_heads, cfg.head_dim, cfg.enc_intermediate, cfg.rms_norm_eps)
            for _ in range(num_layers)
        )
        self.norm = RMSNorm(e, cfg.rms_norm_eps)
        self.rotary_emb = Rotary(cfg.head_dim, cfg.rope_theta)

    def run_layers(self, h: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        cos, sin = self.rotary_emb(h.shape[1], h.dtype)
        masks = attn_backend.MaskSet(h.shape[1], self.cfg.sliding_window, key_mask, h.device)
        for i, layer in enumerate(self.layers):
            h = layer(h, (cos, sin), masks.get(self.cfg.layer_is_sliding(i)))
        return self.norm(h)


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t·1000: the product is taken in t's dtype (bf16 rounds it), the
    angles in fp32, cos first then sin, cast back to t's dtype."""
    half = dim // 2
    s = t * 1000.0
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = s[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)
