"""Attention kernels behind one function.

Semantics: non-causal; "full" layers mask only padded keys; "sliding"
layers additionally allow only |i - j| <= window. The DiT passes no padding mask at all.

Backends: PyTorch SDPA everywhere (default; on CUDA it dispatches to flash / memory-efficient
kernels by itself), and on CUDA FlexAttention for banded (sliding-window) masks, where a block-sparse
kernel skips the blocks outside the band. `set_backend("sdpa" | "flex" | "auto")` chooses; "auto"
uses flex only on CUDA when it imports, and falls back to SDPA otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_BACKEND = {"name": "auto"}
_FLEX: dict[str, object] = {}


def set_backend(name: str) -> None:
    if name not in ("auto", "sdpa", "flex"):
        raise ValueError(f"unknown attention backend {name!r}; use 'auto', 'sdpa' or 'flex'")
    _BACKEND["name"] = name


def get_backend() -> str:
    return _BACKEND["name"]


def _flex_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if "fn" not in _FLEX:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
            _FLEX["create_block_mask"] = create_block_mask
        except Exception as e:  # pragma: no cover - depends on the torch build
            log.info("FlexAttention unavailable (%s); using SDPA", e)
            _FLEX["fn"] = None
    return _FLEX["fn"] is not None


@dataclass
class Mask:
    """A boolean mask [B|1, 1, Lq, Lk] (True = may attend) plus what a banded kernel needs."""

    dense: torch.Tensor | None
    window: int | None = None
    has_padding: bool = False
    _block: object = None
    _additive: dict | None = None

    def for_sdpa(self, dtype: torch.dtype) -> torch.Tensor:
        """Padding masks become additive with the dtype's minimum (not -inf), as upstream builds
        them: a query row whose keys are all padding (a long pad under a sliding window) then
        averages over all keys instead of producing NaN."""
        if not self.has_padding:
            return self.dense
        if self._additive is None:
            self._additive = {}
        if dtype not in self._additive:
            zeros = torch.zeros(self.dense.shape, dtype=dtype, device=self.dense.device)
            self._additive[dtype] = zeros.masked_fill(~self.dense, torch.finfo(dtype).min)
        return self._additive[dtype]

    def block_mask(self, lq: int, lk: int, device: torch.device):
        if self._block is None:
            w = self.window

            def band(b, h, q_idx, kv_idx):
                return (q_idx - kv_idx).abs() <= w

            self._block = _FLEX["create_block_mask"](band, None, None, lq, lk, device=device)
        return self._block


class MaskSet:
    """Masks for one sequence length: built lazily, shared by all layers of a stack."""

    def __init__(
        self, length: int, window: int, key_mask: torch.Tensor | None, device: torch.device, padded: bool | None = None
    ) -> None:
        """`padded`: whether `key_mask` hides any key; None = look (a host sync), True = assume so
        (compiled bodies, where the look would break the graph)."""
        self.length, self.window, self.key_mask, self.device, self.padded = length, window, key_mask, device, padded
        self._cache: dict[bool, Mask | None] = {}

    def get(self, sliding: bool) -> Mask | None:
        if sliding not in self._cache:
            self._cache[sliding] = self._build(sliding)
        return self._cache[sliding]

    def _build(self, sliding: bool) -> Mask | None:
        dense = None
        if sliding and self.window < self.length - 1:
            i = torch.arange(self.length, device=self.device)
            dense = ((i[:, None] - i[None, :]).abs() <= self.window)[None, None]
        pad = self.key_mask is not None and (self.padded or (self.padded is None and not bool(self.key_mask.all())))
        if pad:
            keys = self.key_mask.to(torch.bool)[:, None, None, :]
            dense = keys if dense is None else dense & keys
        if dense is None:
            return None
        return Mask(dense, window=self.window if sliding else None, has_padding=pad)


def _repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask | None) -> torch.Tensor:
    """q [B, H, Lq, hd], k/v [B, KV, Lk, hd] → [B, H, Lq, hd]; scale hd^-0.5."""
    groups = q.shape[1] // k.shape[1]
    backend = _BACKEND["name"]
    if (
        mask is not None
        and mask.window is not None
        and not mask.has_padding
        and backend in ("auto", "flex")
        and _flex_available(q.device)
    ):
        block = mask.block_mask(q.shape[2], k.shape[2], q.device)
        return _FLEX["fn"](q, k, v, block_mask=block, enable_gqa=groups > 1)
    if q.device.type == "cuda" and mask is None:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=groups > 1)
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.for_sdpa(q.dtype))
