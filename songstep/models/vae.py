"""Adapter over diffusers `AutoencoderOobleck` (the official `vae/` folder) with upstream's
tiled encode/decode, and the silence-latent asset.

Shapes at the boundary are upstream's handler shapes: waveforms [B, 2, S] at 48 kHz, latents
[B, T, 64] at 25 Hz (T = S // 1920); the network itself works channel-first.

Tiling (overlap-discard, as upstream): the input is cut into cores of `chunk - 2*overlap`; each
core is processed inside a window that extends `overlap` further on each side (clipped at the
ends) and only the core's part of the output is kept. Inputs no longer than `chunk` are processed
whole. Encode tiles are `chunk` seconds (30 s; 15 s on CUDA devices with <= 8 GiB) with 2 s
overlap; decode tiles are 512 latent frames with 64 frames overlap (32/8 on MPS). Window and core
boundaries fall on whole latent frames, so the kept parts line up exactly with an untiled pass.
The Oobleck receptive field is about +-8 latent frames (about 0.3 s) for both directions, far less
than either overlap, so a tiled result equals the untiled one up to float rounding. Tiles run one
at a time into a preallocated output, so memory is bounded by the tile size even for 600 s songs.

Posterior sampling (pitfall 14): upstream takes `latent_dist.sample()` unseeded. Here the noise
for the WHOLE latent, shape [B, 64, T], is drawn once up front with diffusers' `randn_tensor`
from the caller's generator (one generator, or one per batch item) in float32 on the VAE device
(a CPU generator draws on the CPU, so the values do not depend on the device), and each tile uses
`mean + std * noise[core]` in float32 with its own posterior mean/std. So a tiled encode uses
exactly the noise values of an untiled one, the noise for a seed does not depend on the VAE dtype,
and for an fp32 VAE the untiled path equals `vae.encode(x).latent_dist.sample(generator)` bit for
bit.

Numbers (see tests/models/test_vae.py): tiled vs untiled <= 5.2e-7 abs on CPU fp32. On CUDA, fp32
convolutions run in TF32 by default (`torch.backends.cudnn.allow_tf32`, a process-wide setting this
module leaves alone): tiled vs untiled decode then differ by 1.4e-4 (peak 0.15, H100, random
Oobleck of official widths), and by 0.0 with TF32 off. 600 s in bf16 on an H100: encode 1.8 s,
peak 2.9 GiB; decode 1.8 s, peak 2.2 GiB.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from songstep.constants import (
    AUDIO_CHANNELS,
    HOP_LENGTH,
    LATENT_CHANNELS,
    SAMPLE_RATE,
)
from songstep.errors import CheckpointError, InvalidAudio, InvalidRequest, ModelNotFound
from songstep.models.folders import check_finite, check_loading_info, component_folder

logger = logging.getLogger(__name__)

ENCODE_CHUNK_SECONDS = 30.0
SMALL_GPU_ENCODE_CHUNK_SECONDS = 15.0
SMALL_GPU_BYTES = 8 * 1024**3
ENCODE_OVERLAP_SECONDS = 2.0
DECODE_CHUNK_FRAMES = 512
DECODE_OVERLAP_FRAMES = 64
MPS_DECODE_CHUNK_FRAMES = 32
MPS_DECODE_OVERLAP_FRAMES = 8

Generators = torch.Generator | list[torch.Generator] | None
TileProgress = Callable[[int, int], None]  # (done, total): per block of each tile


class _BlockProgress:
    """Reports `progress(done, total)` as each encoder/decoder block of each tile finishes (forward
    hooks), so a bar moves during a long single tile too; `total` = tiles * blocks."""

    def __init__(self, blocks: torch.nn.ModuleList, tiles: int, progress: TileProgress | None) -> None:
        self.blocks, self.tiles, self.progress, self.tile = blocks, tiles, progress, 0

    def start(self, tile: int) -> None:
        self.tile = tile

    @contextlib.contextmanager
    def hooked(self) -> Iterator[_BlockProgress]:
        if self.progress is None:
            yield self
            return
        n = len(self.blocks)
        total = max(1, self.tiles * n)

        def hook(index: int):
            return lambda *_: self.progress(min(total, self.tile * n + index + 1), total)

        handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(self.blocks)]
        self.progress(0, total)
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


@dataclass(frozen=True)
class Tile:
    """One overlap-discard tile: the window that is processed and the core that is kept."""

    win_start: int
    win_end: int
    core_start: int
    core_end: int


def plan_tiles(length: int, chunk: int, overlap: int) -> list[Tile]:
    """Upstream's tiling of `length` units: whole when `length <= chunk`, else cores of
    `chunk - 2*overlap` with `overlap` context on each side, clipped to [0, length]."""
    if length <= chunk:
        return [Tile(0, length, 0, length)]
    stride = chunk - 2 * overlap
    if stride <= 0 or overlap < 0:
        raise InvalidRequest(f"tile chunk {chunk} must exceed 2 * overlap {overlap}")
    tiles = []
    for i in range(math.ceil(length / stride)):
        core_start = i * stride
        core_end = min(core_start + stride, length)
        tiles.append(
            Tile(max(0, core_start - overlap), min(length, core_end + overlap), core_start, core_end)
        )
    return tiles


def default_encode_chunk_seconds(device: torch.device | str) -> float:
    """30 s tiles, 15 s on CUDA devices with at most 8 GiB (upstream's GPU tier rule)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
        if total <= SMALL_GPU_BYTES:
            return SMALL_GPU_ENCODE_CHUNK_SECONDS
    return ENCODE_CHUNK_SECONDS


def default_decode_tiling(device: torch.device | str) -> tuple[int, int]:
    """(chunk, overlap) in latent frames: 512/64, or 32/8 on MPS."""
    if torch.device(device).type == "mps":
        return MPS_DECODE_CHUNK_FRAMES, MPS_DECODE_OVERLAP_FRAMES
    return DECODE_CHUNK_FRAMES, DECODE_OVERLAP_FRAMES


class VAE:
    """The Oobleck autoencoder behind a [B, 2, S] <-> [B, T, 64] interface.

    Wraps an in-memory `diffusers.AutoencoderOobleck` (`.model`). Any latent width works as
    long as the encoder emits mean + scale (2 x latent channels); `from_pretrained` also checks
    the ACE-Step facts (48 kHz, stereo, hop 1920, 64 channels).
    """

    def __init__(self, model) -> None:
        config = model.config
        ratios = [int(r) for r in config.downsampling_ratios]
        if any(r % 2 for r in ratios):
            # Even strides make encoder frames = S // hop and decoder samples = T * hop exactly.
            raise CheckpointError(f"VAE downsampling ratios must be even, got {ratios}")
        if int(config.encoder_hidden_size) != 2 * int(config.decoder_input_channels):
            raise CheckpointError(
                "VAE encoder_hidden_size must be 2 x decoder_input_channels (mean + scale), got "
                f"{config.encoder_hidden_size} and {config.decoder_input_channels}"
            )
        self.model = model.eval()
        self.hop_length = math.prod(ratios)
        self.latent_channels = int(config.decoder_input_channels)
        self.audio_channels = int(config.audio_channels)
        self.sample_rate = int(config.sampling_rate)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> VAE:
        """Load the diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors)."""
        with component_folder(path, "VAE") as path:
            from diffusers import AutoencoderOobleck  # imported quietly (its import-time notices)

            model, info = AutoencoderOobleck.from_pretrained(
                path, use_safetensors=True, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False, ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
        check_loading_info(info, path, "VAE")
        check_finite(model.state_dict().items(), f"VAE at {path}")
        vae = cls(model.to(device))
        vae._check_official(path)
        logger.info("loaded VAE from %s (%s, %s)", path, device, dtype)
        return vae

    def _check_official(self, path: Path) -> None:
        facts = {
            "sampling_rate": (self.sample_rate, SAMPLE_RATE),
            "audio_channels": (self.audio_channels, AUDIO_CHANNELS),
            "hop length": (self.hop_length, HOP_LENGTH),
            "decoder_input_channels": (self.latent_channels, LATENT_CHANNELS),
        }
        for name, (got, want) in facts.items():
            if got != want:
                raise CheckpointError(f"VAE in {path}: {name} is {got}, expected {want}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def num_frames(self, num_samples: int) -> int:
        """Latent frames an encode of `num_samples` samples yields (trailing partial hop dropped)."""
        return num_samples // self.hop_length

    # -- encode ----------------------------------------------------------------------------
    def encode(
        self,
        wave: torch.Tensor,
        generator: Generators = None,
        *,
        sample: bool = True,
        chunk_seconds: float | None = None,
        overlap_seconds: float = ENCODE_OVERLAP_SECONDS,
        progress: TileProgress | None = None,
    ) -> torch.Tensor:
        """Waveform [B, 2, S] -> latents [B, S // 1920, 64] float32 on the VAE device.

        `sample=True` (upstream) draws from the posterior with `generator` (a generator, or a
        list of one per item; None = torch's default RNG, not reproducible); `sample=False`
        returns the posterior mean. `chunk_seconds=None` picks the device default. The wave may
        live on any device; tiles are moved to the VAE one at a time. `progress(done, total)` is
        called as each encoder block of each tile finishes.
        """
        self._check_wave(wave)
        batch, _, num_samples = wave.shape
        frames = self.num_frames(num_samples)
        chunk = self._seconds_to_hops(chunk_seconds or default_encode_chunk_seconds(self.device))
        overlap = self._seconds_to_hops(overlap_seconds)
        shape = (batch, self.latent_channels, frames)
        noise = self._draw_noise(shape, generator) if sample else None
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        tiles = list(self._encode_tiles(num_samples, chunk, overlap))
        report = _BlockProgress(self.model.encoder.block, len(tiles), progress)
        with torch.no_grad(), report.hooked():
            for k, (tile, f0, f1, offset) in enumerate(tiles):
                report.start(k)
                window = wave[:, :, tile.win_start : tile.win_end]
                dist = self.model.encode(window.to(device=self.device, dtype=self.dtype)).latent_dist
                latent = dist.mean[:, :, offset : offset + f1 - f0].float()
                if noise is not None:
                    std = dist.std[:, :, offset : offset + f1 - f0].float()
                    latent = latent + std * noise[:, :, f0:f1]
                out[:, :, f0:f1] = latent
        return out.transpose(1, 2).contiguous()

    def _encode_tiles(
        self, num_samples: int, chunk: int, overlap: int
    ) -> Iterator[tuple[Tile, int, int, int]]:
        """Tiles in samples with their kept frames [f0, f1) and the core's offset in the tile."""
        hop = self.hop_length
        for tile in plan_tiles(num_samples, chunk, overlap):
            f0, f1 = tile.core_start // hop, tile.core_end // hop
            if f1 > f0:
                yield tile, f0, f1, (tile.core_start - tile.win_start) // hop

    def _seconds_to_hops(self, seconds: float) -> int:
        """Seconds -> samples, rounded to whole latent frames so tiles align with the grid."""
        if seconds < 0:
            raise InvalidRequest(f"tile length must be >= 0 s, got {seconds}")
        return round(seconds * self.sample_rate / self.hop_length) * self.hop_length

    def _draw_noise(self, shape: tuple[int, int, int], generator: Generators) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        if isinstance(generator, list) and len(generator) != shape[0]:
            raise InvalidRequest(f"{len(generator)} generators for a batch of {shape[0]}")
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def _check_wave(self, wave: torch.Tensor) -> None:
        if not isinstance(wave, torch.Tensor) or wave.dim() != 3 or wave.shape[1] != self.audio_channels:
            shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
            raise InvalidAudio(f"expected a waveform [B, {self.audio_channels}, S], got {shape}")
        if wave.shape[0] == 0 or self.num_frames(wave.shape[2]) == 0:
            raise InvalidAudio(
                f"waveform too short to encode: {wave.shape[2]} samples < one hop ({self.hop_length})"
            )

    # -- decode ----------------------------------------------------------------------------
    def decode(
        self,
        latents: torch.Tensor,
        *,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
        output_device: torch.device | str | None = None,
        progress: TileProgress | None = None,
    ) -> torch.Tensor:
        """Latents [B, T, 64] -> waveform [B, 2, T * 1920] float32 (no clipping or normalisation).

        Tiled as upstream when T > `chunk_frames` (default 512, overlap 64; MPS 32/8). The output
        is preallocated on `output_device` (default: the VAE device). `progress(done, total)` is
        called as each decoder block of each tile finishes.
        """
        self._check_latents(latents)
        batch, frames, _ = latents.shape
        default_chunk, default_overlap = default_decode_tiling(self.device)
        chunk = default_chunk if chunk_frames is None else chunk_frames
        overlap = default_overlap if overlap_frames is None else overlap_frames
        hop = self.hop_length
        target = torch.device(output_device) if output_device is not None else self.device
        out = torch.empty((batch, self.audio_channels, frames * hop), dtype=torch.float32, device=target)
        z = latents.transpose(1, 2)
        tiles = plan_tiles(frames, chunk, overlap)
        report = _BlockProgress(self.model.decoder.block, len(tiles), progress)
        with torch.no_grad(), report.hooked():
            for k, tile in enumerate(tiles):
                report.start(k)
                window = z[:, :, tile.win_start : tile.win_end].to(device=self.device, dtype=self.dtype)
                audio = self.model.decode(window).sample
                if audio.shape[-1] != window.shape[-1] * hop:
                    raise CheckpointError(
                        f"VAE decoded {window.shape[-1]} frames to {audio.shape[-1]} samples, "
                        f"expected {window.shape[-1] * hop}"
                    )
                start = (tile.core_start - tile.win_start) * hop
                kept = audio[:, :, start : start + (tile.core_end - tile.core_start) * hop]
                out[:, :, tile.core_start * hop : tile.core_end * hop] = kept.to(target, torch.float32)
        return out

    def _check_latents(self, latents: torch.Tensor) -> None:
        ok = isinstance(latents, torch.Tensor) and latents.dim() == 3
        if not ok or latents.shape[2] != self.latent_channels or latents.shape[1] == 0:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise InvalidRequest(f"expected latents [B, T>0, {self.latent_channels}], got {shape}")


# -- silence latent ------------------------------------------------
def load_silence_latent(path: str | Path) -> torch.Tensor:
    """Load `silence_latent.pt` (a bare float tensor [1, 64, N], channel-first) safely with
    `weights_only=True` and return it transposed to [1, N, 64] float32 on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"silence latent not found: {path}")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read silence latent {path}: {exc}") from exc
    ok = (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dim() == 3
        and value.shape[0] == 1
        and value.shape[1] == LATENT_CHANNELS
        and value.shape[2] > 0
    )
    if not ok:
        desc = (
            f"tensor {tuple(value.shape)} {value.dtype}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise CheckpointError(
            f"silence latent {path} must be a float tensor [1, {LATENT_CHANNELS}, N], got {desc}"
        )
    check_finite([("silence latent", value)], str(path))
    return value.float().transpose(1, 2).contiguous()


def silence_prefix(silence: torch.Tensor, frames: int) -> torch.Tensor:
    """The leading `frames` frames of a [1, N, C] silence latent, tiled when frames > N."""
    if frames < 0:
        raise InvalidRequest(f"frames must be >= 0, got {frames}")
    length = silence.shape[1]
    if frames > length:
        silence = silence.repeat(1, math.ceil(frames / length), 1)
    return silence[:, :frames]


__all__ = [
    "VAE",
    "Tile",
    "plan_tiles",
    "default_encode_chunk_seconds",
    "default_decode_tiling",
    "load_silence_latent",
    "silence_prefix",
]
