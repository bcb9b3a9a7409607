"""Condition encoder (text projector, lyric encoder, timbre encoder, packing) and the attention
pooler of the audio tokenizer."""

from __future__ import annotations

import torch
from torch import nn

from songstep.config import DiTConfig
from songstep.models.blocks import EncoderStack


def pack_sequences(
    h1: torch.Tensor, h2: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate along the sequence, then move valid tokens first (stable), padding after."""
    h = torch.cat([h1, h2], dim=1)
    m = torch.cat([m1.to(torch.int64), m2.to(torch.int64)], dim=1)
    order = torch.argsort(m, dim=1, descending=True, stable=True)
    h = torch.gather(h, 1, order[..., None].expand(-1, -1, h.shape[-1]))
    counts = m.sum(dim=1, keepdim=True)
    mask = torch.arange(m.shape[1], device=m.device)[None, :] < counts
    return h, mask


class LyricEncoder(EncoderStack):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg, cfg.text_hidden_dim, cfg.num_lyric_encoder_hidden_layers)

    def forward(self, lyric_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.run_layers(self.embed_tokens(lyric_hidden_states), key_mask=attention_mask)


class TimbreEncoder(EncoderStack):
    """2B: the first frame's output; XL: a CLS `special_token` is prepended and its output taken."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg, cfg.timbre_hidden_dim, cfg.num_timbre_encoder_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, cfg.enc_hidden))

    def embed(self, packed: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(packed)
        if self.cfg.is_xl:
            h = torch.cat([self.special_token.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
        return self.run_layers(h)[:, 0]

    def forward(
        self, packed: torch.Tensor, order_mask: torch.Tensor, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (embeddings [B, max_refs, E], mask [B, max_refs] int64), references grouped by item
        in their original order and left-aligned."""
        emb = self.embed(packed)
        order = order_mask.to(torch.int64)
        counts = torch.bincount(order, minlength=batch_size)
        max_refs = int(counts.max()) if order.numel() else 0
        # position of each reference within its item (stable)
        same = order[:, None] == order[None, :]
        earlier = torch.tril(torch.ones_like(same), diagonal=-1)
        slot = (same & earlier).sum(dim=1)
        flat = order * max_refs + slot
        onehot = torch.zeros(batch_size * max_refs, order.numel(), dtype=emb.dtype, device=emb.device)
        onehot[flat, torch.arange(order.numel(), device=emb.device)] = 1
        out = (onehot @ emb).view(batch_size, max_refs, -1)
        mask = (torch.arange(max_refs, device=emb.device)[None, :] < counts[:, None]).to(torch.int64)
        return out, mask


class ConditionEncoder(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_projector = nn.Linear(cfg.text_hidden_dim, cfg.enc_hidden, bias=False)
        self.lyric_encoder = LyricEncoder(cfg)
        self.timbre_encoder = TimbreEncoder(cfg)

    def forward(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        lyric_hidden_states: torch.Tensor,
        lyric_attention_mask: torch.Tensor,
        refer_audio_acoustic_hidden_states_packed: torch.Tensor,
        refer_audio_order_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ packed encoder states [B, Ll + max_refs + Lt, E] and their bool mask: valid lyric,
        timbre and text tokens first, then the padding of each (the DiT attends to all of it)."""
        text = self.text_projector(text_hidden_states)
        lyrics = self.lyric_encoder(lyric_hidden_states, lyric_attention_mask)
        timbre, timbre_mask = self.timbre_encoder(
            refer_audio_acoustic_hidden_states_packed, refer_audio_order_mask, text.shape[0]
        )
        h, m = pack_sequences(lyrics, timbre, lyric_attention_mask, timbre_mask)
        return pack_sequences(h, text, m, text_attention_mask)


class AttentionPooler(EncoderStack):
    """Pools each group of W frames into one vector through a prepended special token."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg, cfg.enc_hidden, cfg.num_attention_pooler_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, cfg.enc_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, T5, W, E] → [N, T5, E]."""
        n, t5, w, e = x.shape
        h = self.embed_tokens(x)
        special = self.special_token.to(h.dtype).expand(n, t5, 1, e)
        h = torch.cat([special, h], dim=2).reshape(n * t5, w + 1, e)
        return self.run_layers(h)[:, 0].reshape(n, t5, e)
