"""The ACE-Step 1.5 DiT: one class for every variant (2B turbo/base/sft, XL turbo/base/sft).

Parameter names and shapes are the checkpoint's own; the arithmetic follows
upstream's modules step by step. XL behaviour (timbre CLS token, encoder width ≠ decoder width, FSQ in fp32) is
selected by `config.encoder_hidden_size` being set.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from songstep.config import DiTConfig
from songstep.models.attention import MaskSet
from songstep.models.blocks import MLP, Attention, RMSNorm, Rotary, timestep_features
from songstep.models.encoders import ConditionEncoder
from songstep.models.fsq import AudioTokenDetokenizer, AudioTokenizer

CrossKV = list[tuple[torch.Tensor, torch.Tensor]]


class Transpose(nn.Module):
    """[B, L, C] ↔ [B, C, L]; parameterless, so the conv sits at state-dict index 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, in_dim: int = 256) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] → (temb [B, D], projection [B, 6, D])."""
        f = timestep_features(t, self.in_dim).to(self.linear_1.weight.dtype)
        temb = self.linear_2(F.silu(self.linear_1(f)))
        proj = self.time_proj(F.silu(temb))
        return temb, proj.view(t.shape[0], 6, -1)


class DiTLayer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.self_attn_norm = RMSNorm(d, eps)
        self.self_attn = Attention(d, heads, kv, hd, eps)
        self.cross_attn_norm = RMSNorm(d, eps)
        self.cross_attn = Attention(d, heads, kv, hd, eps)
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = MLP(d, cfg.intermediate_size)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, d))

    def forward(self, x, tproj, rope, mask, cross_kv) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = (self.scale_shift_table + tproj).chunk(6, dim=1)
        h = self.self_attn_norm(x) * (1 + scale_msa) + shift_msa
        x = x + self.self_attn(h, rope=rope, mask=mask) * gate_msa
        x = x + self.cross_attn(self.cross_attn_norm(x), kv=cross_kv)
        h = self.mlp_norm(x) * (1 + c_scale) + c_shift
        return x + self.mlp(h) * c_gate

    def forward_with_cross_probs(self, x, tproj, rope, mask, cross_kv) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` with the cross-attention computed eagerly; also returns its probabilities
        [B, H, frames, encoder tokens]."""
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = (self.scale_shift_table + tproj).chunk(6, dim=1)
        h = self.self_attn_norm(x) * (1 + scale_msa) + shift_msa
        x = x + self.self_attn(h, rope=rope, mask=mask) * gate_msa
        cross, probs = self.cross_attn.cross_with_probs(self.cross_attn_norm(x), cross_kv)
        x = x + cross
        h = self.mlp_norm(x) * (1 + c_scale) + c_shift
        return x + self.mlp(h) * c_gate, probs


class DiTDecoder(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.audio_acoustic_hidden_dim
        self.time_embed = TimestepEmbedding(d)
        self.time_embed_r = TimestepEmbedding(d)
        self.proj_in = nn.Sequential(Transpose(), nn.Conv1d(cfg.in_channels, d, p, stride=p), Transpose())
        self.condition_embedder = nn.Linear(cfg.enc_hidden, d)
        self.layers = nn.ModuleList(DiTLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm_out = RMSNorm(d, cfg.rms_norm_eps)
        self.proj_out = nn.Sequential(Transpose(), nn.ConvTranspose1d(d, c, p, stride=p), Transpose())
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, d))
        self.rotary_emb = Rotary(cfg.head_dim, cfg.rope_theta)

    def cross_kv(self, encoder_hidden_states: torch.Tensor) -> CrossKV:
        """Cross-attention keys/values of every layer for one condition (the sampler's cache)."""
        e = self.condition_embedder(encoder_hidden_states)
        return [layer.cross_attn.project_kv(e) for layer in self.layers]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        timestep_r: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        context_latents: torch.Tensor | None = None,
        *,
        cross_kv: CrossKV | None = None,
    ) -> torch.Tensor:
        """x_t [B, T, 64], t [B], r [B], encoder states [B, Lenc, E] (or their `cross_kv`),
        context [B, T, 128] → velocity [B, T, 64]. Masks are not taken: the DiT ignores them.
        With `songstep.models.dit_compile.compile_decoder` applied, the call runs through its
        length-bucketed compiled body."""
        if cross_kv is None:
            cross_kv = self.cross_kv(encoder_hidden_states)
        runner = self.__dict__.get("bucketed")
        if runner is not None:
            return runner(hidden_states, timestep, timestep_r, context_latents, cross_kv)
        return self.body(hidden_states, timestep, timestep_r, context_latents, cross_kv)

    def body(self, hidden_states, timestep, timestep_r, context_latents, cross_kv, token_mask=None) -> torch.Tensor:
        """The network on [B, T] frames. `token_mask` [1, T/p] (True = a real patch) hides padded
        patches from every self-attention key (bucketed lengths); None = every patch is real."""
        x, temb, tproj, rope, masks = self._embed(hidden_states, timestep, timestep_r, context_latents, token_mask)
        for i, layer in enumerate(self.layers):
            x = layer(x, tproj, rope, masks.get(self.cfg.layer_is_sliding(i)), cross_kv[i])
        shift, scale = (self.scale_shift_table + temb[:, None, :]).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale) + shift
        return self.proj_out(x)[:, : hidden_states.shape[1]]

    def _embed(self, hidden_states, timestep, timestep_r, context_latents, token_mask=None):
        """(patched input [B, F, D], temb, its 6-way projection, RoPE, masks) for the layers."""
        temb_t, proj_t = self.time_embed(timestep)
        temb_r, proj_r = self.time_embed_r(timestep - timestep_r)
        temb, tproj = temb_t + temb_r, proj_t + proj_r
        z = torch.cat([context_latents, hidden_states], dim=-1)
        pad = (-hidden_states.shape[1]) % self.cfg.patch_size
        if pad:
            z = F.pad(z, (0, 0, 0, pad))
        x = self.proj_in(z)
        rope = self.rotary_emb(x.shape[1], x.dtype)
        masks = MaskSet(x.shape[1], self.cfg.sliding_window, token_mask, x.device, padded=token_mask is not None)
        return x, temb, tproj, rope, masks

    def cross_attention_probs(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        timestep_r: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        context_latents: torch.Tensor,
        layers: Iterable[int],
    ) -> dict[int, torch.Tensor]:
        """The lyric-alignment pass: the decoder run as `forward` up to the last of `layers` (no
        later layer, no output head), with the cross-attention of every layer run computed
        eagerly. Returns {layer: probabilities [B, H, F, Lenc]} for the requested layers (F =
        ceil(T / patch) decoder frames). The sampling path (`forward`) keeps no weights."""
        wanted = sorted({int(i) for i in layers})
        if not wanted:
            return {}
        if wanted[0] < 0 or wanted[-1] >= len(self.layers):
            raise ValueError(f"decoder layers {wanted} outside 0..{len(self.layers) - 1}")
        e = self.condition_embedder(encoder_hidden_states)
        cross_kv = [layer.cross_attn.project_kv(e) for layer in self.layers[: wanted[-1] + 1]]
        x, _, tproj, rope, masks = self._embed(hidden_states, timestep, timestep_r, context_latents)
        out: dict[int, torch.Tensor] = {}
        for i in range(wanted[-1] + 1):
            x, probs = self.layers[i].forward_with_cross_probs(
                x, tproj, rope, masks.get(self.cfg.layer_is_sliding(i)), cross_kv[i]
            )
            if i in wanted:
                out[i] = probs
        return out


class DiTModel(nn.Module):
    """decoder + condition encoder + audio tokenizer/detokenizer + null condition embedding."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.decoder = DiTDecoder(cfg)
        self.encoder = ConditionEncoder(cfg)
        self.tokenizer = AudioTokenizer(cfg)
        self.detokenizer = AudioTokenDetokenizer(cfg)
        self.null_condition_emb = nn.Parameter(torch.zeros(1, 1, cfg.enc_hidden))

    @property
    def dtype(self) -> torch.dtype:
        return self.null_condition_emb.dtype

    @property
    def device(self) -> torch.device:
        return self.null_condition_emb.device

    def reset_buffers(self) -> None:
        """(Re)compute every non-persistent buffer on the parameters' device, cast to their dtype
        (needed after a meta-device build; matches upstream's `.to(dtype)` rounding)."""
        device, dtype = self.device, self.dtype
        for m in self.modules():
            if isinstance(m, Rotary):
                m.reset_buffers(device, dtype)
        self.tokenizer.quantizer.reset_buffers(device, dtype)

    # -- tokenizer helpers -------------------------------------------------
    def tokenize(
        self, x: torch.Tensor, silence_latent: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, T, 64] → (quantized [N, T5, E], indices [N, T5, Q] int32, pooled mask [N, T5]).
        T is padded to a multiple of W with the *first* frames of the silence latent."""
        x, mask = self._pad_to_window(x, silence_latent, attention_mask)
        n, t, c = x.shape
        w = self.config.pool_window_size
        quantized, indices = self.tokenizer(x.view(n, t // w, w, c))
        return quantized, indices, self._pool_mask(mask, t // w)

    def _pad_to_window(self, x, silence_latent, attention_mask):
        w = self.config.pool_window_size
        pad = (-x.shape[1]) % w
        if pad:
            fill = silence_latent[:, :pad].to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x, fill], dim=1)
            attention_mask = F.pad(attention_mask, (0, pad))
        return x, attention_mask

    def _pool_mask(self, mask: torch.Tensor, t5: int) -> torch.Tensor:
        m = mask.to(self.dtype)
        k = -(-m.shape[1] // t5)
        return F.max_pool1d(m[:, None, :], kernel_size=k, stride=k)[:, 0]

    def detokenize(self, quantized: torch.Tensor) -> torch.Tensor:
        return self.detokenizer(quantized)

    def codes_to_hints(self, indices: torch.Tensor) -> torch.Tensor:
        """LM audio codes [N, n] or [N, n, Q] → 25 Hz hints [N, 5n, 64]."""
        if indices.dim() == 2:
            indices = indices[..., None]
        indices = indices.clamp(0, self.tokenizer.quantizer.layers[0].codebook_size - 1)
        q = self.tokenizer.quantizer.get_output_from_indices(indices).to(self.dtype)
        return self.detokenizer(q)

    # -- conditioning ------------------------------------------------------------
    def prepare_condition(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        lyric_hidden_states: torch.Tensor,
        lyric_attention_mask: torch.Tensor,
        refer_audio_acoustic_hidden_states_packed: torch.Tensor,
        refer_audio_order_mask: torch.Tensor,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        silence_latent: torch.Tensor,
        src_latents: torch.Tensor,
        chunk_masks: torch.Tensor,
        is_covers: torch.Tensor,
        precomputed_lm_hints_25Hz: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (encoder_hidden_states, encoder_attention_mask (bool), context_latents [B, T, 128]).

        Cover items get their source replaced by LM hints: the precomputed ones, else the
        tokenize→detokenize round trip of `hidden_states`. Upstream runs that round trip on every
        call; here it is skipped when no item is a cover (its result would be discarded)."""
        enc, enc_mask = self.encoder(
            text_hidden_states,
            text_attention_mask,
            lyric_hidden_states,
            lyric_attention_mask,
            refer_audio_acoustic_hidden_states_packed,
            refer_audio_order_mask,
        )
        t = src_latents.shape[1]
        src = src_latents
        covers = is_covers.to(torch.bool).to(src.device)
        if bool(covers.any()):
            if precomputed_lm_hints_25Hz is not None:
                hints = precomputed_lm_hints_25Hz[:, :t]
            else:
                q, _, _ = self.tokenize(hidden_states, silence_latent, attention_mask)
                hints = self.detokenize(q)[:, :t]
            src = torch.where(covers[:, None, None], hints.to(src.dtype), src)
        context = torch.cat([src, chunk_masks.to(src.dtype)], dim=-1)
        return enc, enc_mask, context
