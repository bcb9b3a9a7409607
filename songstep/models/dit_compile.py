"""`torch.compile` for the DiT decoder without a recompile for every new song length.

Lengths are bucketed: the frames are zero-padded up to the next multiple of `bucket_frames`
(default 750 = 30 s at 25 Hz), and a key mask hides the padded patches from every self-attention
layer (full layers: key padding; sliding layers: band and key padding). Every other operation of
the decoder is per patch (patchify conv, norms, MLPs, modulation, cross-attention, un-patchify) and
RoPE positions start at 0 either way, so the real frames' outputs equal the unpadded forward's up to
fp32 summation order; the padded frames are cut off. A song length that is odd in frames pads one
zero frame inside its last patch, exactly as the unpadded forward does.

The compiled graph is specialised on the bucket and the batch (one compile each); the encoder
length (caption + lyrics tokens, which vary per request) is marked dynamic on the cross-attention
keys/values, so a new lyric length does not recompile.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DEFAULT_BUCKET_FRAMES = 750  # 30 s of 25 Hz latents
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RECOMPILE_LIMIT = 64  # buckets × batch sizes one process may meet


def bucket_length(frames: int, bucket_frames: int, patch: int) -> int:
    """The padded frame count: the next multiple of `bucket_frames` (itself rounded up to a
    multiple of the patch size)."""
    step = -(-bucket_frames // patch) * patch
    return max(step, -(-frames // step) * step)


class BucketedDecoder:
    """Calls `decoder.body` at bucketed lengths, through `torch.compile` when `backend` is set
    (None: the same padding eagerly, for checking that padding leaves the numbers alone)."""

    def __init__(
        self, decoder, backend: str | None = "inductor", bucket_frames: int = DEFAULT_BUCKET_FRAMES, mode: str | None = None
    ) -> None:
        if bucket_frames < 1:
            raise ValueError(f"bucket_frames must be positive, got {bucket_frames}")
        self.decoder, self.backend, self.bucket_frames, self.mode = decoder, backend, bucket_frames, mode
        self.body = decoder.body
        if backend is not None:
            raise_recompile_limit()
            self.body = torch.compile(decoder.body, backend=backend, dynamic=False, mode=mode)
        self._masks: dict[tuple[int, int, str], torch.Tensor] = {}

    def token_mask(self, frames: int, padded: int, device: torch.device) -> torch.Tensor:
        """[1, padded/p] bool: True for the patches that hold a real frame."""
        key = (frames, padded, str(device))
        if key not in self._masks:
            p = self.decoder.cfg.patch_size
            self._masks[key] = (torch.arange(padded // p, device=device) < -(-frames // p))[None]
        return self._masks[key]

    def __call__(self, hidden_states, timestep, timestep_r, context_latents, cross_kv) -> torch.Tensor:
        frames = hidden_states.shape[1]
        padded = bucket_length(frames, self.bucket_frames, self.decoder.cfg.patch_size)
        if padded != frames:
            hidden_states = F.pad(hidden_states, (0, 0, 0, padded - frames))
            context_latents = F.pad(context_latents, (0, 0, 0, padded - frames))
        if self.backend is not None:
            for k, v in cross_kv:
                torch._dynamo.mark_dynamic(k, 2)
                torch._dynamo.mark_dynamic(v, 2)
        mask = self.token_mask(frames, padded, hidden_states.device)
        out = self.body(hidden_states, timestep, timestep_r, context_latents, cross_kv, mask)
        if self.mode is not None and "cudagraphs" not in self.mode and self.mode != "default":
            return out[:, :frames].clone()  # CUDA graph outputs are overwritten by the next replay
        return out[:, :frames]


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Let one process compile `limit` shapes per function (buckets × batch sizes; FlexAttention's
    per-length kernels) before dynamo falls back to eager."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def parse_compile(option: bool | str) -> tuple[str, str | None]:
    """`compile=` → (backend, mode): True → inductor; a torch.compile mode name ("reduce-overhead":
    CUDA graphs, "max-autotune", ...) → inductor with that mode; any other string → that backend."""
    if option is True:
        return "inductor", None
    name = str(option)
    if name in MODES:
        return "inductor", None if name == "default" else name
    return name, None


def compile_decoder(
    decoder, backend: str | None = "inductor", bucket_frames: int = DEFAULT_BUCKET_FRAMES, mode: str | None = None
) -> None:
    """Route `decoder.forward` through a `BucketedDecoder` (kept out of the module tree, so the
    state dict is unchanged)."""
    decoder.__dict__["bucketed"] = BucketedDecoder(decoder, backend, bucket_frames, mode)
    log.info("DiT decoder: %s, lengths bucketed to %d frames",
             f"torch.compile({backend}, mode={mode})" if backend else "eager", bucket_frames)


def uncompile_decoder(decoder) -> None:
    decoder.__dict__.pop("bucketed", None)
