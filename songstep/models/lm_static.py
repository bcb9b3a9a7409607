"""Static-shape decode runner for the Qwen3 planner LM: our own KV cache over the HF model's weights.

Why: transformers' `model.model(...)` with a `StaticCache` under `torch.compile` recompiled and broke
graphs inside HF's mask creation and cache-position logic, and eager it spent ~29 ms per token on an
H100 in Python and ~700 kernel launches. `StaticQwen3(model)` computes the same thing from the *same
parameter tensors* (no copies), with transformers' `modeling_qwen3` arithmetic: RMSNorm in float32
then cast back and scaled; per-head q/k RMSNorm before RoPE; RoPE cos/sin in float32 from the
model's own `rotary_emb.inv_freq` and `attention_scaling`, cast to the model dtype; GQA; SiLU MLP;
final norm. It returns the last hidden state; the caller applies the (possibly row-restricted) head.
Supported: RoPE types whose frequencies do not depend on the sequence length (`STATIC_ROPE`),
full and sliding-window layers (`config.layer_types`), `attention_bias`. Anything else raises
`NotImplementedError` at construction.

KV cache: per layer K and V `[B, kv_heads, max_len, head_dim]`, one entry per (batch, max_len
bucket); the `entries` most recently used buckets are kept (the CoT phase at B=1 and the code phase
at B=2 do not evict each other) and reused by later generations. A prefill claims its entry:
a session of an earlier prefill on the same entry (or an evicted one) raises `SongstepError`.
Slots are the left-padded batch columns: the prompt fills slots 0..L-1, step t writes slot L+t.

* `prefill` (eager; the prompt length varies): positions `cumsum(mask) - 1`, causal + padding mask.
* `step` has fully static shapes and no host syncs or data-dependent Python: the token ids, the
  positions `[B, 1]` and the write slot `[1]` live in per-entry device buffers; K/V go in with
  `index_copy_`; attention runs over the whole static cache with an additive float mask from the
  `[B, max_len]` slot-validity buffer (prompt padding masked, slots after the write slot masked).
  One query token per row lets the GQA heads fold into the query length (`[B, kv, groups, D]`), so
  SDPA needs neither `repeat_interleave` of the cache nor `enable_gqa` support.

Compilation (`compile=True`): `torch.compile(fullgraph=True)` of the step, inductor without
cudagraphs, symbolic in the cache length (the entries' K/V and slot buffers are marked dynamic in
that dimension), so one compile per batch size serves every song length; graphs stay per entry. `cuda_graph=True` (CUDA only) then captures, per cache entry, the step (position
and slot increments included) in a `torch.cuda.CUDAGraph` on the entry's static buffers, after two
warm-up runs on a side stream; a decode step is then one copy of the tokens into the entry's input
buffer and one `replay()`. (inductor writes K/V in place: no copy of the cache per step.) The capture is done by hand rather than with `mode="reduce-overhead"` because here every
static address is explicit (cache, inputs, output), whereas cudagraph trees decide by themselves
whether a mutated input is static (`mark_static_address`) and silently skip graphs or re-record when
they are unsure; a failing capture is an exception we can catch. Any compile or capture failure is
logged once and the runner falls back: compiled graph → eager graph → eager. The recompile limit is
raised around compile calls (batch 1 and batch ≥ 2 compile separately). On CPU everything is eager
by default; `compile=True` there only compiles (no graphs).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from songstep.errors import SongstepError

logger = logging.getLogger(__name__)

STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # inv_freq and scaling fixed at init
CACHE_BUCKET = 256  # static-cache lengths are rounded up to this (fewer compiles and graphs)
_GQA_SDPA = torch.__version__ >= "2.5"  # `enable_gqa=` of scaled_dot_product_attention


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions for left-padded rows: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def bucket_length(length: int) -> int:
    return -(-length // CACHE_BUCKET) * CACHE_BUCKET


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Lq, S] (True = may attend) → additive float mask [B, 1, Lq, S]. The dtype's
    minimum rather than -inf: a padded query row with no visible key stays finite."""
    zeros = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return zeros.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


@dataclass(frozen=True)
class _Layer:
    """Views of one decoder layer's parameters (the HF tensors themselves)."""

    in_norm: torch.Tensor
    post_norm: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    o_bias: torch.Tensor | None
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    sliding: bool

    @classmethod
    def of(cls, layer: torch.nn.Module, sliding: bool) -> _Layer:
        at, mlp = layer.self_attn, layer.mlp
        return cls(
            layer.input_layernorm.weight,
            layer.post_attention_layernorm.weight,
            at.q_norm.weight,
            at.k_norm.weight,
            at.q_proj.weight,
            at.k_proj.weight,
            at.v_proj.weight,
            at.o_proj.weight,
            at.q_proj.bias,
            at.k_proj.bias,
            at.v_proj.bias,
            at.o_proj.bias,
            mlp.gate_proj.weight,
            mlp.up_proj.weight,
            mlp.down_proj.weight,
            sliding,
        )


@dataclass(eq=False)
class _Entry:
    """One (batch, max_len) bucket: the KV cache, the step's static input buffers and, with
    CUDA graphs, the captured step and its output buffer."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    ids: torch.Tensor  # [B, 1] long: the tokens fed by the next step
    pos: torch.Tensor  # [B, 1] long: RoPE position of the last written slot
    slot: torch.Tensor  # [1] long: the last written slot
    allowed: torch.Tensor  # [B, max_len] bool: prompt padding False, everything after the prompt True
    owner: int = 0  # generation of the session using it; -1 once evicted
    graph: torch.cuda.CUDAGraph | None = None
    out: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.allowed.shape[1]


@dataclass
class StaticState:
    """A session's handle on its cache entry (see `StaticQwen3.step`)."""

    entry: _Entry
    generation: int
    length: int  # slots written


def check_supported(model: torch.nn.Module) -> tuple[bool, ...]:
    """Per-layer "is sliding" flags; `NotImplementedError` for what the runner does not do."""
    cfg = model.config
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in STATIC_ROPE:
        raise NotImplementedError(
            f"RoPE type {rope!r} depends on the sequence length; the static LM runner supports "
            f"{', '.join(STATIC_ROPE)} (use static_cache=False)"
        )
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise NotImplementedError(f"hidden_act {cfg.hidden_act!r}: the static LM runner implements silu")
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    if types is None:  # transformers without layer_types: Qwen2-style max_window_layers
        start = cfg.max_window_layers if getattr(cfg, "use_sliding_window", False) else n
        types = ["sliding_attention" if i >= start else "full_attention" for i in range(n)]
    unknown = set(types[:n]) - {"full_attention", "sliding_attention"}
    if unknown:
        raise NotImplementedError(f"layer types {sorted(unknown)} are not supported by the static LM runner")
    return tuple(t == "sliding_attention" for t in types[:n])


class StaticQwen3:
    """Prefill + static one-token step of a transformers `Qwen3ForCausalLM` (see the module doc).

    Weights are read from `model` at construction: build the runner after moving the model."""

    def __init__(
        self, model: torch.nn.Module, *, compile: bool = False, cuda_graph: bool = False, entries: int = 2
    ):
        sliding = check_supported(model)
        cfg, body = model.config, model.model
        self.device = next(model.parameters()).device
        self.dtype = body.embed_tokens.weight.dtype
        self.embed = body.embed_tokens.weight
        self.norm = body.norm.weight
        self.layers = [_Layer.of(layer, s) for layer, s in zip(body.layers, sliding)]
        self.window = int(cfg.sliding_window) if any(sliding) else 0
        self.eps = float(cfg.rms_norm_eps)
        self.inv_freq = body.rotary_emb.inv_freq
        self.rope_scale = float(body.rotary_emb.attention_scaling)
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = body.layers[0].self_attn.scaling
        self.entries = entries
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._cache: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self._generation = 0
        self.compiled = compile  # False again after a compile failure (eager fallback)
        self._compiled_step = torch.compile(self._decode, fullgraph=True, dynamic=None) if compile else None

    # --- the network ---------------------------------------------------------------------------

    def _rope(self, pos: torch.Tensor, dtype: torch.dtype):
        """cos, sin [B, 1, T, D] for positions [B, T], as `Qwen3RotaryEmbedding.forward`."""
        freqs = pos[..., None].float() * self.inv_freq.to(device=pos.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]

    def _attend(self, q, k, v, bias):
        """SDPA of q [B, H, T, D] over k, v [B, KV, S, D] with the additive mask [B, 1, T, S]."""
        batch, heads, length, dim = q.shape
        groups = heads // self.kv_heads
        if length == 1:  # decode: fold the query heads of each KV head into the query length
            out = F.scaled_dot_product_attention(
                q.view(batch, self.kv_heads, groups, dim), k, v, attn_mask=bias, scale=self.scale
            )
            return out.reshape(batch, heads, 1, dim)
        if _GQA_SDPA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale, enable_gqa=True)
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)

    def _block(self, p: _Layer, x, rope, bias, k_cache, v_cache, slots):
        """One decoder layer on x [B, T, H]; K/V of the T tokens go to `slots`, attention runs
        over the first `bias.shape[-1]` slots."""
        batch, length, _ = x.shape
        shape = (batch, length, -1, self.head_dim)
        h = _rms(x, p.in_norm, self.eps)
        q = _rms(F.linear(h, p.q, p.q_bias).view(shape), p.q_norm, self.eps).transpose(1, 2)
        k = _rms(F.linear(h, p.k, p.k_bias).view(shape), p.k_norm, self.eps).transpose(1, 2)
        v = F.linear(h, p.v, p.v_bias).view(shape).transpose(1, 2)
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        k_cache.index_copy_(2, slots, k)
        v_cache.index_copy_(2, slots, v)
        span = bias.shape[-1]
        attn = self._attend(q, k_cache[:, :, :span], v_cache[:, :, :span], bias)
        x = x + F.linear(attn.transpose(1, 2).reshape(batch, length, -1), p.o, p.o_bias)
        h = _rms(x, p.post_norm, self.eps)
        return x + F.linear(F.silu(F.linear(h, p.gate)) * F.linear(h, p.up), p.down)

    def _run(self, ids, pos, slots, visible, window_visible, keys, values):
        x = F.embedding(ids, self.embed)
        rope = self._rope(pos, x.dtype)
        full = _additive(visible, x.dtype)
        sliding = _additive(window_visible, x.dtype) if self.window else full
        for layer, k_cache, v_cache in zip(self.layers, keys, values):
            x = self._block(layer, x, rope, sliding if layer.sliding else full, k_cache, v_cache, slots)
        return _rms(x[:, -1], self.norm, self.eps)

    def _decode(self, ids, pos, slot, allowed, keys, values):
        """The static step: ids/pos [B, 1], slot [1] (the slot to write), allowed [B, S]."""
        index = torch.arange(allowed.shape[1], device=allowed.device)
        visible = allowed & (index <= slot)
        window = visible & (index > slot - self.window) if self.window else visible
        return self._run(ids, pos, slot, visible[:, None], window[:, None], keys, values)

    # --- cache entries and sessions ------------------------------------------------------------

    def _new_entry(self, batch: int, max_len: int) -> _Entry:
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        kw = {"dtype": self.dtype, "device": self.device}
        n = len(self.layers)
        return _Entry(
            keys=[torch.zeros(shape, **kw) for _ in range(n)],
            values=[torch.zeros(shape, **kw) for _ in range(n)],
            ids=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            pos=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            slot=torch.zeros(1, dtype=torch.long, device=self.device),
            allowed=torch.ones((batch, max_len), dtype=torch.bool, device=self.device),
        )

    def _entry(self, batch: int, max_len: int) -> _Entry:
        key = (batch, max_len)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        while len(self._cache) >= self.entries:
            _, old = self._cache.popitem(last=False)
            old.owner = -1
        entry = self._new_entry(batch, max_len)
        if self.compiled:  # one compile serves every cache length (the step is symbolic in it)
            for cache in (*entry.keys, *entry.values):
                torch._dynamo.maybe_mark_dynamic(cache, 2)
            torch._dynamo.maybe_mark_dynamic(entry.allowed, 1)
        if self.cuda_graph:
            self._prepare_graph(entry)
        self._cache[key] = entry
        return entry

    def release(self) -> int:
        """Drop every cache entry (K/V, buffers, captured graphs and their memory pools); return
        the bytes of K/V freed. Sessions on them raise from now on; compiled code is kept."""
        freed = 0
        for entry in self._cache.values():
            entry.owner = -1
            freed += sum(t.numel() * t.element_size() for t in (*entry.keys, *entry.values))
            entry.graph = entry.out = None
        self._cache.clear()
        if freed and self.device.type == "cuda":
            torch.cuda.empty_cache()
        return freed

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int):
        """Run left-padded prompts ids/mask [B, L] into a cache entry with room for
        `max_new_tokens` more; return (state, last hidden [B, hidden])."""
        batch, length = ids.shape
        entry = self._entry(batch, bucket_length(length + max_new_tokens))
        self._generation += 1
        entry.owner = self._generation
        entry.allowed[:, :length] = mask.bool()
        entry.allowed[:, length:] = True
        pos = positions_from_mask(mask)
        index = torch.arange(length, device=self.device)
        causal = index[:, None] >= index[None, :]
        visible = entry.allowed[:, None, :length] & causal
        window = visible & (index[:, None] - index[None, :] < self.window) if self.window else visible
        hidden = self._run(ids, pos, index, visible, window, entry.keys, entry.values)
        entry.pos.copy_(pos[:, -1:])
        entry.slot.fill_(length - 1)
        return StaticState(entry, self._generation, length), hidden

    @torch.inference_mode()
    def step(self, state: StaticState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([B]); return the last hidden state [B, hidden]. The result is
        the entry's output buffer under CUDA graphs: use it before the next step."""
        entry = state.entry
        if entry.owner != state.generation:
            raise SongstepError("this LM session's static KV cache was reused by a later prefill or released")
        if state.length >= entry.max_len:
            raise SongstepError(f"LM session is full ({state.length} tokens); raise max_new_tokens")
        entry.ids.copy_(tokens.view(-1, 1))
        state.length += 1
        if entry.graph is not None:
            entry.graph.replay()
            return entry.out
        return self._graph_step(entry)

    def _call(self, entry: _Entry) -> torch.Tensor:
        args = (entry.ids, entry.pos, entry.slot, entry.allowed, entry.keys, entry.values)
        if not self.compiled:
            return self._decode(*args)
        try:
            with _recompile_limit(64):
                return self._compiled_step(*args)
        except Exception as exc:  # torch.compile failures vary by version; eager stays correct
            logger.warning("torch.compile of the LM step failed (%s); using eager", exc)
            self.compiled = False
            return self._decode(*args)

    def _prepare_graph(self, entry: _Entry) -> None:
        try:
            self._capture(entry)
        except Exception as exc:  # capture or compile failures depend on the torch/CUDA build
            entry.graph = entry.out = None
            if self.compiled:
                logger.warning("compiled LM step failed under CUDA graph capture (%s); capturing eager", exc)
                self.compiled = False
                return self._prepare_graph(entry)
            logger.warning("CUDA graph capture of the LM step failed (%s); running eager", exc)
            self.cuda_graph = False

    def _graph_step(self, entry: _Entry) -> torch.Tensor:
        """What the captured graph does: advance position and slot, run the step."""
        entry.pos.add_(1)
        entry.slot.add_(1)
        return self._call(entry)

    def _capture(self, entry: _Entry) -> None:
        """Warm up on a side stream (compiles for this bucket), then capture one step. The
        warm-up writes K/V at slots 1-2 and bumps pos/slot: the next prefill resets both."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._graph_step(entry)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private memory pool per graph
            out = self._graph_step(entry)
        entry.graph, entry.out = graph, out


def _recompile_limit(limit: int):
    """Scoped `torch._dynamo.config` patch: the step's compiles (batch sizes, and any length
    dynamo still specialises on) may pass the default limit of 8 (`cache_size_limit` before
    torch 2.6)."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    return cfg.patch(**{name: max(getattr(cfg, name), limit)})
