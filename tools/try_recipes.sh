#!/usr/bin/env bash
# Try each recipe of docs/architecture.md ("which files to touch") by adding a dummy merge method,
# statistics-based method, subspace mode and command, using each from the CLI, counting the files
# touched, and restoring src/ (git checkout) after each.
# usage, from the repo root with a clean src/ and a finished quick demo (osrm demo --quick):
#     bash tools/try_recipes.sh runs/demo-quick [OUT_DIR]
set -u
D=${1:?usage: tools/try_recipes.sh QUICK_DEMO_RUN_DIR [OUT_DIR]}
if [ -n "$(git status --porcelain src)" ]; then echo "src/ has uncommitted changes; commit them first" >&2; exit 2; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
O=.venv/bin/osrm; R=${2:-$(mktemp -d)}; mkdir -p "$R"
A="$D/adapters/osrm/trec $D/adapters/osrm/sms_spam $D/adapters/osrm/vader_movies"
S="$D/stats/trec.safetensors $D/stats/sms_spam.safetensors $D/stats/vader_movies.safetensors"
files() { echo "  files touched: $(git diff --name-only | tr '\n' ' ')($(git diff --name-only | wc -l))"; }
restore() { git checkout -q -- src; }

echo "== 1. a plain merge method (dummy_max: the entry of largest |w_i Δ_i|, times a new hp 'shrink')"
cat >> src/osrm/merging/methods.py <<'PY'


@register("dummy_max", shrink=check_scale)
def dummy_max(deltas: Tensor, weights: Tensor, *, shrink: float = 1.0) -> Tensor:
    """Per entry, the weighted delta of largest magnitude, times ``shrink`` (recipe check)."""
    d = weights.view(-1, *[1] * (deltas.dim() - 1)) * deltas
    return shrink * d.gather(0, d.abs().argmax(0, keepdim=True)).squeeze(0)
PY
sed -i "s/^from osrm.merging.checks import check_below_one$/from osrm.merging.checks import check_below_one, check_scale/" src/osrm/merging/methods.py
files
$O -q merge $A --method dummy_max --hp shrink=0.5 --out $R/plain && echo "  dense merge: ok" || echo "  dense merge: FAILED"
$O -q merge $A --method dummy_max --format lora --rank 8 --out $R/plain-lora && echo "  lora merge: ok" || echo "  lora merge: FAILED"
$O -q merge $A --method dummy_max --hp shrink=-1 --out $R/bad; echo "  bad hp exit: $?"
$O -q eval --merged $R/plain --task sms_spam --split test >$R/plain-eval.txt 2>&1 && echo "  eval --merged: ok ($(tail -1 $R/plain-eval.txt | cut -c1-100))" || { echo "  eval FAILED"; cat $R/plain-eval.txt | tail -3; }
python -c "import json;m=json.load(open('$R/plain/osrm_merge.json'));print('  record:', m['method'], m['hyperparameters'])"
restore

echo "== 2. a statistics-based merge method (dummy_gram: deltas projected onto each task's top Gram direction)"
cat >> src/osrm/merging/structured.py <<'PY'


@register("dummy_gram", needs_stats=True)
def dummy_gram(deltas: Tensor, weights: Tensor, *, grams: Tensor, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i P_i with P_i the projector on the top eigenvector of G_i (recipe check)."""
    top = torch.linalg.eigh(grams.double())[1][..., -1].to(deltas.dtype)  # (k, d_in)
    proj = top.unsqueeze(-1) * top.unsqueeze(-2)  # (k, d_in, d_in)
    return scale * torch.einsum("k,kod,kde->oe", weights, deltas, proj)
PY
files
$O -q merge $A --method dummy_gram --stats $S --out $R/gram && echo "  merge with stats: ok" || echo "  merge with stats: FAILED"
$O -q merge $A --method dummy_gram --out $R/gram-nostats; echo "  without --stats exit: $?"
restore

echo "== 3. a subspace mode (dummy: the largest-energy directions of C_-i, the opposite of the paper)"
sed -i 's/^MODES = ("cov", "mean", "contrast")/MODES = ("cov", "mean", "contrast", "dummy")/' src/osrm/inits.py
sed -i 's/^    "lora": Init(None, "peft default"),/    "lora": Init(None, "peft default"),\n    "dummy_init": Init("dummy", "recipe check"),/' src/osrm/inits.py
python - <<'PY'
from pathlib import Path
p = Path("src/osrm/subspace.py"); s = p.read_text()
solver = '''def dummy_basis(
    stats_by_task: StatsByTask, task: str, module: str, rank: int, opts: SubspaceOptions
) -> Tensor:
    """Recipe check: the ``rank`` largest eigenvectors of ``C_{-i}``, as rows."""
    c = other_moment(stats_by_task, task, module, opts.weighting, opts.center)
    return fix_sign(torch.linalg.eigh(c.double())[1][:, -rank:].T.contiguous())


SOLVERS: dict[str, Solver] = {'''
s = s.replace("SOLVERS: dict[str, Solver] = {", solver, 1)
s = s.replace('"contrast": contrast_basis}', '"contrast": contrast_basis, "dummy": dummy_basis}', 1)
p.write_text(s)
PY
files
$O -q run src/osrm/demo-quick.yaml run_dir=$R/sub 'lora.inits=[dummy_init]' 'subspace.modes=[dummy]' train.steps=3 stats.examples=32 eval.max_eval_examples=32 'merge.methods={task_arithmetic: {scale: 1.0}}' >$R/sub.log 2>&1 && echo "  osrm run with the new mode: ok" || { echo "  run FAILED"; tail -3 $R/sub.log; }
python -c "import json;p=json.load(open('$R/sub/adapters/dummy_init/trec/osrm_provenance.json'));print('  provenance:', p.get('init'), p.get('mode'))" 2>&1 | tail -1
ls $R/sub/adapters/dummy_init 2>&1 | tr '\n' ' '; echo
restore

echo "== 4. a command (osrm tasks: list a config's tasks with their split sizes)"
python - <<'PY'
from pathlib import Path
p = Path("src/osrm/pipeline.py"); s = p.read_text()
s += '''

def list_tasks(config: str | os.PathLike, overrides: list[str]) -> list[str]:
    """One line per task of a config: name, source, main metric (recipe check)."""
    from osrm.tasks.registry import task_spec

    cfg = load_config(config, overrides)
    return [f"{t}: {task_spec(cfg, t).source} {task_spec(cfg, t).main_metric}" for t in cfg.task_names]
'''
p.write_text(s)
p = Path("src/osrm/cli.py"); s = p.read_text()
s = s.replace("class Command(NamedTuple):", '''def _cmd_tasks(args: argparse.Namespace) -> None:
    from osrm import pipeline

    print("\\n".join(pipeline.list_tasks(args.config, args.overrides)))


class Command(NamedTuple):''', 1)
s = s.replace('''    "demo": Command(''', '''    "tasks": Command(
        config_args, _cmd_tasks, "list a config's tasks", ("osrm tasks configs/demo.yaml",),
    ),
    "demo": Command(''', 1)
p.write_text(s)
PY
files
$O tasks src/osrm/demo-quick.yaml && echo "  osrm tasks: ok" || echo "  osrm tasks: FAILED"
$O --help | grep -c "tasks" | sed 's/^/  help mentions: /'
restore
git status --short src
