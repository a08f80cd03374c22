#!/usr/bin/env bash
# Merge the quick demo's osrm adapters with every method (dense + one LoRA output); print sha256 of the weights.
# usage, from the repo root: bash tools/merge_all.sh QUICK_DEMO_RUN_DIR OUTDIR
# (OUTDIR is replaced). Run it before and after a change and diff the two listings.
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
O=.venv/bin/osrm
D=${1:?usage: tools/merge_all.sh QUICK_DEMO_RUN_DIR OUTDIR}; OUT=${2:?usage: tools/merge_all.sh QUICK_DEMO_RUN_DIR OUTDIR}
A="$D/adapters/osrm/trec $D/adapters/osrm/sms_spam $D/adapters/osrm/vader_movies"
S="$D/stats/trec.safetensors $D/stats/sms_spam.safetensors $D/stats/vader_movies.safetensors"
rm -rf "$OUT"; mkdir -p "$OUT"
run() { name=$1; shift; $O -q merge $A "$@" --out "$OUT/$name" >/dev/null 2>"$OUT/$name.err" || { echo "$name FAILED: $(cat $OUT/$name.err)"; return; }
  f=$OUT/$name/model.safetensors; [ -f "$f" ] || f=$OUT/$name/adapter_model.safetensors; echo "$name $(sha256sum < $f | cut -c1-16)"; }
run ta --method task_arithmetic --scale 0.5
run ta-w --method task_arithmetic --weights 1 0.5 2
run ties --method ties --density 0.2
run ties-w-norm --method ties --density 0.3 --weights 1 2 0.5 --normalize
run wa --method weight_average
run dare_linear --method dare_linear --density 0.5 --seed 1
run dare_ties --method dare_ties --density 0.5 --seed 2
run magnitude_prune --method magnitude_prune --density 0.3
run breadcrumbs --method breadcrumbs --hp density=0.8 gamma=0.05
run knots --method knots --hp inner=ties density=0.2
run tsv --method tsv
run regmean --method regmean --stats $S
run regmean-sum --method regmean --stats $S --hp gram=sum
run lora-ta --method task_arithmetic --format lora
run lora-ties --method ties --format lora --rank 8
