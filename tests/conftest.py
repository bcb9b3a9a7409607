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

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
