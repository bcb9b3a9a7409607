#!/usr/bin/env bash
# The prepared GPU check: one command, about 8.5 minutes, for a machine lent for a few minutes
# (README "Performance" says what it measures and what awaits it).
#
# Prepare on the CPU box (the GPU box has no network); the wheels travel with the tree (carry .wheels,
# 64 MiB at most: these are about 33 MiB):
#   pip download --no-deps -d .wheels diffusers torchao llguidance soundfile soxr mutagen cffi pycparser \
#       pyloudnorm hypothesis sortedcontainers attrs pytest pluggy iniconfig \
#       matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil
# then on the GPU box:  bash benchmarks/gpu_session.sh      (results in $OUT, else ./gpu-results)
#
# Order = priority; each step has its own timeout and writes as it goes, so a step cut short
# still leaves its rows:
#   1. bench-lm   the planner LM, Qwen3-1.7B shape, static cache + compile + CUDA graph, 240 s song
#   2. bench      python -m benchmarks at full size: text, DiT (songstep eager / compiled at
#                 240 s batch 1 / int8, beside diffusers' AceStepTransformer1DModel), DiT CFG batch,
#                 VAE, end to end (+ the LM rows of step 1); durations 30/120/240/600 s, batch 1 and 8
#   3. sync-check host syncs inside the DiT step loop (CUDA sync debug mode), cross-K/V reuse, CFG rows
#   4. gpu-tests  the gpu-marked tests
# EXTRA=1 adds the older planner comparisons (transformers runner, 0.6B, vLLM when installed).
set -uo pipefail
out="${OUT:-gpu-results}"; mkdir -p "$out"
site=/tmp/songstep-site
if [ -d .wheels ]; then  # one by one: a wheel built for another Python is skipped, not fatal
  for w in .wheels/*.whl; do pip install -q --no-index --no-deps --target "$site" "$w" 2>/dev/null || echo "skipped $w"; done
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
python -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$out/device.txt"
run() {  # name, timeout seconds, command…
  local name=$1 limit=$2; shift 2
  echo "== $name"; timeout "$limit" "$@" > "$out/$name.out" 2> "$out/$name.log"
  local rc=$?; echo "rc=$rc"; tail -c 1500 "$out/$name.out"
  if [ "$rc" != 0 ]; then tail -n 8 "$out/$name.log"; fi
}
run bench-lm 120 python -m benchmarks --out "$out/bench-lm" --stages lm --lm-duration 240
run bench 300 python -m benchmarks --out "$out/bench" --compile --focus 240x1 \
  --stages text dit dit-cfg vae e2e --durations 30 120 240 600 --batches 1 8 --cfg-batches 1 --repeats 1 \
  --include "$out/bench-lm/results.json"
[ -f "$out/bench/results.md" ] && sed -n '1,20p' "$out/bench/results.md"
run sync-check 30 python benchmarks/sync_check.py
run gpu-tests 45 python -m pytest -q -p no:cacheprovider -m gpu tests/models
if [ "${EXTRA:-0}" = 1 ]; then
  run planner-1.7B-hf 120 python benchmarks/planner.py --config 1.7B --runner hf --codes 200
  run planner-0.6B 180 python benchmarks/planner.py --config 0.6B
  if python -c "import vllm" 2>/dev/null; then
    run planner-1.7B-vllm 300 python benchmarks/planner.py --config 1.7B --runner vllm
  fi
fi
run train-lora 240 python benchmarks/train_lora.py --full --rank 64 --seconds 60 240
