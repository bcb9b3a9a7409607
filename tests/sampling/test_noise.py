"""Initial noise and seeds: upstream's generator rules, retake mixing, the
recording noise stream, and seed reproducibility of `generate_latents` on a tiny DiT."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from songstep.sampling.dcw import DCWOptions
from songstep.sampling.dit import DiTInputs, generate_latents
from songstep.sampling.flow import SamplerOptions
from songstep.sampling.noise import NoiseStream, draw_noise, generators_from_seed, mix_retake
from songstep.testing.tiny import tiny_dit

T, C = 10, 64


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# generator rules


def test_generators_from_seed_kinds() -> None:
    assert generators_from_seed(None) is None
    g = generators_from_seed(5)
    assert isinstance(g, torch.Generator) and g.initial_seed() == 5
    gens = generators_from_seed([3, None, -1, 0])
    assert isinstance(gens, list) and len(gens) == 4
    assert gens[0].initial_seed() == 3 and gens[3].initial_seed() == 0
    assert gens[1] is None and gens[2] is None  # None and negative → unseeded


def test_int_seed_is_one_draw_over_the_whole_batch() -> None:
    noise = draw_noise((2, T, C), generators_from_seed(7))
    assert noise.shape == (2, T, C) and noise.dtype == torch.float32
    assert torch.equal(noise, _randn((2, T, C), 7))
    # one stream over the batch: item 1 continues the stream, so it differs from item 0 and from
    # a batch-1 draw with the same seed, while item 0 is that batch-1 draw (the stream's prefix;
    # T·C is a multiple of 16, torch's vectorised normal block)
    single = draw_noise((1, T, C), generators_from_seed(7))
    assert torch.equal(noise[:1], single)
    assert not torch.equal(noise[1], noise[0])
    assert not torch.equal(noise[1:], single)
    assert torch.equal(noise.flatten(), _randn((2 * T * C,), 7))


def test_seed_list_is_one_generator_and_one_draw_per_item() -> None:
    noise = draw_noise((3, T, C), generators_from_seed([11, 12, 11]))
    for k, seed in enumerate([11, 12, 11]):
        assert torch.equal(noise[k : k + 1], _randn((1, T, C), seed))
        assert torch.equal(noise[k : k + 1], draw_noise((1, T, C), generators_from_seed(seed)))
    assert torch.equal(noise[0], noise[2])  # the handler's [seed]·B gives identical items
    assert not torch.equal(noise[0], noise[1])


def test_seed_list_must_match_the_batch() -> None:
    with pytest.raises(ValueError):
        draw_noise((2, T, C), generators_from_seed([1, 2, 3]))


def test_unseeded_draws_differ() -> None:
    a = draw_noise((2, T, C), generators_from_seed(None))
    b = draw_noise((2, T, C), generators_from_seed(None))
    assert not torch.equal(a, b)
    a = draw_noise((3, T, C), generators_from_seed([4, None, -2]))
    b = draw_noise((3, T, C), generators_from_seed([4, None, -2]))
    assert torch.equal(a[0], b[0])  # the seeded row repeats
    assert not torch.equal(a[1], b[1]) and not torch.equal(a[2], b[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_draw_dtype(dtype: torch.dtype) -> None:
    noise = draw_noise((1, T, C), generators_from_seed([9]), dtype=dtype)
    assert noise.dtype == dtype
    expected = torch.randn((1, T, C), generator=torch.Generator().manual_seed(9), dtype=dtype)
    assert torch.equal(noise, expected)


# ----------------------------------------------------------------------------------------------
# retake


def test_mix_retake_end_points() -> None:
    noise, retake = _randn((2, T, C), 1), _randn((2, T, C), 2)
    assert mix_retake(noise, retake, 0.0) is noise
    assert mix_retake(noise, retake, -0.5) is noise
    torch.testing.assert_close(mix_retake(noise, retake, 1.0), retake, atol=1e-6, rtol=0)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1.0))
def test_mix_retake_formula(v: float) -> None:
    noise, retake = _randn((1, T, C), 3), _randn((1, T, C), 4)
    mixed = mix_retake(noise.double(), retake.double(), v)
    expected = math.cos(v * math.pi / 2) * noise.double() + math.sin(v * math.pi / 2) * retake.double()
    torch.testing.assert_close(mixed, expected, atol=1e-12, rtol=0)


@settings(max_examples=10, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0), st.integers(0, 1000))
def test_mix_retake_preserves_unit_variance(v: float, seed: int) -> None:
    n = 200_000
    noise, retake = _randn((n,), seed), _randn((n,), seed + 10_001)
    mixed = mix_retake(noise, retake, v)
    # var of the sample ~ 1 ± 3·sqrt(2/n)
    assert abs(mixed.var().item() - 1.0) < 0.015
    assert abs(mixed.mean().item()) < 0.015


# ----------------------------------------------------------------------------------------------
# noise stream


def test_noise_stream_records_and_follows_generators() -> None:
    like = torch.zeros(2, T, C)
    stream = NoiseStream(generators_from_seed([5, 6]), record=True)
    a, b = stream(like), stream(like)
    assert stream.draws is not None and len(stream.draws) == 2
    assert stream.draws[0] is a and stream.draws[1] is b
    g5, g6 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    first = torch.cat([torch.randn((1, T, C), generator=g5), torch.randn((1, T, C), generator=g6)])
    second = torch.cat([torch.randn((1, T, C), generator=g5), torch.randn((1, T, C), generator=g6)])
    assert torch.equal(a, first) and torch.equal(b, second)
    assert NoiseStream(None).draws is None
    assert stream(like.to(torch.bfloat16)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# seeds end to end on a tiny DiT


@pytest.fixture(scope="module")
def model():
    # one intra-op thread: these tiny forwards gain nothing from two, and on a loaded 2-core box
    # OpenMP's spinning threads make them ~100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tiny_dit(21)
    finally:
        torch.set_num_threads(threads)


def _inputs(batch: int, seed: int = 0) -> DiTInputs:
    g = torch.Generator().manual_seed(seed)
    return DiTInputs(
        text_hidden_states=torch.randn(batch, 5, 32, generator=g),
        text_attention_mask=torch.ones(batch, 5, dtype=torch.bool),
        lyric_hidden_states=torch.randn(batch, 6, 32, generator=g),
        lyric_attention_mask=torch.ones(batch, 6, dtype=torch.bool),
        refer_audio_acoustic_hidden_states_packed=torch.randn(batch, 30, 64, generator=g),
        refer_audio_order_mask=torch.arange(batch),
        src_latents=torch.randn(batch, T, C, generator=g),
        chunk_masks=torch.ones(batch, T, C, dtype=torch.bool),
        is_covers=torch.zeros(batch, dtype=torch.bool),
        silence_latent=torch.randn(1, 40, C, generator=g),
    )


def _generate(model, seed, batch: int = 2) -> torch.Tensor:
    noise = draw_noise((batch, T, C), generators_from_seed(seed))
    return generate_latents(model, _inputs(batch), noise, SamplerOptions(steps=3))


def test_same_seed_same_latents(model) -> None:
    a, b = _generate(model, [42, 7]), _generate(model, [42, 7])
    assert a.shape == (2, T, C) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert torch.equal(_generate(model, 42), _generate(model, 42))


def test_different_seeds_differ(model) -> None:
    a, b = _generate(model, [42, 7]), _generate(model, [43, 7])
    assert not torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)  # same seed, same item
    assert not torch.equal(_generate(model, 1), _generate(model, 2))


def test_unseeded_generation_differs(model) -> None:
    assert not torch.equal(_generate(model, None), _generate(model, None))


def test_sde_generation_reproducible_with_a_seeded_stream(model) -> None:
    opts = SamplerOptions(steps=3, method="sde", dcw=DCWOptions(enabled=False))
    noise = draw_noise((2, T, C), generators_from_seed([1, 2]))
    runs = []
    for _ in range(2):
        stream = NoiseStream(generators_from_seed(99), record=True)
        runs.append(generate_latents(model, _inputs(2), noise, opts, sde_noise=stream))
        assert stream.draws is not None and len(stream.draws) == 2  # turbo: n − 1 re-noisings
    assert torch.equal(runs[0], runs[1])
