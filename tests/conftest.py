"""Test-session setup.

MKL_CBWR=COMPATIBLE pins MKL's fp32 GEMM code path so CPU results do not depend on which vector
unit the test machine has. The reference fixtures were produced on a machine whose MKL ran that
path (on this repo's Intel AVX-512 CI box the default kernels differ from it by up to ~1e-5 in the
decoder, right at the fixtures' 1e-5 tolerance; with the pinned path the difference is ~2e-6, the
reference's own eager-vs-SDPA spread). MKL reads the variable at its first call, so it is set here,
before anything in the session runs a matrix product. It is a test setting, not a library one.
"""

import os

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
# One compute thread per test process (subprocesses such as the CLI test inherit it): the tiny
# models are too small to gain from threads, and on a busy 2-core box OpenMP's spinning threads
# made them up to 100x slower. Results do not depend on it (MKL_CBWR pins the GEMM path).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny tensors: intra-op threads only spin (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory):
    """A complete tiny random checkpoint tree in the official layout (written once per session)."""
    from songstep.testing.tiny import write_tiny_tree

    return write_tiny_tree(tmp_path_factory.mktemp("checkpoints") / "tiny", seed=0)


@pytest.fixture(scope="session")
def source_wav(tmp_path_factory):
    """A 4 s stereo 48 kHz test song: two tones and a little noise, written with soundfile.
    (Short on purpose: even the tiny VAE's encoder runs 128 channels at the full sample rate.)"""
    import numpy as np
    import soundfile as sf

    sr, seconds = 48000, 4.0
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(0)
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.02 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("audio") / "source.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), sr, subtype="FLOAT")
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny planner LM folder (`write_tiny_lm`): tiny Qwen3, tokenizer with the code tokens."""
    from songstep.testing.tiny_lm import write_tiny_lm

    return write_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    """The tiny planner LM loaded on the CPU (default backend), one per test module."""
    from songstep.models.lm import load_lm

    return load_lm(tiny_lm_dir, device="cpu")
