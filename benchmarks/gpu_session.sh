#!/usr/bin/env bash
# One prepared GPU check for a machine lent for a few minutes (see README "Speed").
#
# Prepare on the CPU box (the GPU box has no network):
#   pip download --no-deps -d .wheels llguidance diffusers soundfile soxr mutagen cffi pycparser pyloudnorm \
#       hypothesis sortedcontainers attrs pytest pluggy iniconfig
# then run there with `.wheels` carried:  bash benchmarks/gpu_session.sh
# It installs the wheels beside the machine's own torch/transformers, runs the gpu-marked tests,
# then the benchmarks (planner: static runner + compile + CUDA graphs vs transformers' forward,
# 0.6B and 1.7B shapes; DiT; pipeline), each as JSON lines in $OUT (or ./gpu-results).
set -uo pipefail
out="${OUT:-gpu-results}"; mkdir -p "$out"
site=/tmp/songstep-site
if [ -d .wheels ]; then pip install -q --no-index --no-deps --target "$site" .wheels/*.whl; fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
run() {  # name, timeout seconds, command…
  local name=$1 limit=$2; shift 2
  echo "== $name"; timeout "$limit" "$@" > "$out/$name.json" 2> "$out/$name.log"
  local rc=$?; echo "rc=$rc"; tail -c 1500 "$out/$name.json"
  if [ "$rc" != 0 ]; then tail -n 5 "$out/$name.log"; fi
}
run gpu-tests 240 python -m pytest -q -p no:cacheprovider -m gpu tests/models
run planner-1.7B 240 python benchmarks/planner.py --config 1.7B
run planner-1.7B-hf 120 python benchmarks/planner.py --config 1.7B --runner hf --codes 200
run planner-0.6B 180 python benchmarks/planner.py --config 0.6B
# the vLLM backend, only where the machine has vllm (its CUDA wheels are too large to carry)
if python -c "import vllm" 2>/dev/null; then
  run planner-1.7B-vllm 300 python benchmarks/planner.py --config 1.7B --runner vllm
fi
run dit 120 python benchmarks/dit_forward.py --frames 6000 --batch 1 8
run pipeline 180 python benchmarks/pipeline.py --seconds 240 --batch 1 4
run train-lora 240 python benchmarks/train_lora.py --full --rank 64 --seconds 60 240
