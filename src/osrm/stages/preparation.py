"""Stage 0: everything checked before a run writes anything, then its run directory claimed."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from osrm import distributed
from osrm.config import ExperimentConfig, load_config
from osrm.errors import OsrmError
from osrm.models import load_error, resolve_device, resolve_model
from osrm.rundir import check_recorded, check_run_dir, record_config
from osrm.stages.evaluation import merge_grid
from osrm.stats import capture_inputs, find_target_modules, input_dim
from osrm.tasks.prompts import task_prompt
from osrm.tasks.registry import get_task, task_sizes, task_spec
from osrm.tasks.spec import TaskSpec, generative


def prepare(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load and validate the config, lock and create the run directory, record the config.

    Everything that can be checked without the model's weights is checked before anything is
    written: the run directory, the model (its config built on the meta device: device, target
    modules, rank), every task's data and the splits the run uses, the merge grid. A mistake
    therefore leaves no ``config.yaml`` behind that would refuse the corrected command. The run
    directory stays locked (:mod:`osrm.locking`) until
    :func:`osrm.rundir.unlock_run_dir` or the process ends.

    Raises:
        OsrmError: a bad config, model, task or merge setting, a run directory that holds a
            run made with different settings, is not an osrm run, holds a symbolic link, or is
            in use by another osrm process.
    """
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir)
    check_recorded(cfg, run_dir)
    for entry in cfg.tasks:
        if isinstance(entry, str):
            try:
                get_task(entry)
            except OsrmError as e:
                raise OsrmError(f"{config}: tasks: {e}") from None
    check_model(cfg)
    specs = [task_spec(cfg, task) for task in cfg.task_names]
    for spec in specs:  # cached: the stages reuse what is loaded here
        check_splits(cfg, spec)
    if generative(specs):
        for spec in specs:
            task_prompt(spec)  # its template and verbalisers fit the task
    elif cfg.eval.exact_match:
        raise OsrmError(f"{config}: eval.exact_match scores generated answers: it needs "
                        "generative tasks (format: generate)")  # fmt: skip
    merge_grid(cfg)
    distributed.barrier()  # every process compared against the old config.yaml
    record_config(cfg, run_dir)  # locked by the main process for the whole command
    distributed.barrier()
    torch.manual_seed(cfg.seed)
    return cfg


def check_model(cfg: ExperimentConfig) -> None:
    """The device exists, and the model's skeleton (its config on the meta device, no weights)
    has the target modules, with an input dimension of at least ``lora.rank``."""
    resolve_device(cfg.model.device)
    name = cfg.model.name
    path = resolve_model(name)
    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise OsrmError(
            f"model.name {name!r}: {path} has no *.safetensors weights; osrm loads weights from "
            "safetensors only (pickle files such as pytorch_model.bin can run code when loaded)"
        )
    remote = cfg.model.trust_remote_code
    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(
                model_config, trust_remote_code=remote
            )
    except (OSError, ValueError) as e:
        raise load_error(name, path, e) from None
    try:
        check_rank(cfg, skeleton)
    except OsrmError as e:
        raise OsrmError(f"lora.target_modules: {e}" if "matches" in str(e) else str(e)) from None
    if cfg.stats.mask == "attention":
        check_token_inputs(skeleton, cfg.lora.target_modules)


def check_token_inputs(skeleton: torch.nn.Module, target_modules: list[str]) -> None:
    """Every target module sees one input row per token, (batch, seq, d_in), as the statistics'
    attention mask needs (a pooler sees one per sequence): one forward pass on the meta device,
    which costs no memory and no weights."""
    modules = find_target_modules(skeleton, target_modules)
    ids = torch.ones(2, 5, dtype=torch.long, device="meta")
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with capture_inputs(modules, lambda n, x: shapes.setdefault(n, tuple(x.shape[:-1]))):
            skeleton(input_ids=ids)  # no mask: BERT's mask code calls .item(), not meta-safe
    except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError):
        return  # an architecture that cannot run on meta tensors: checked when statistics run
    for name, shape in shapes.items():
        if shape != (2, 5):
            raise OsrmError(
                f"lora.target_modules: {name} sees one input per sequence, not one per token; "
                "target per-token layers (e.g. query, value) or set stats.mask: none"
            )


def check_splits(cfg: ExperimentConfig, spec: TaskSpec) -> None:
    """The splits the run uses (train; ``eval.split``) have examples."""
    sizes = task_sizes(spec, seed=cfg.seed)
    for split in dict.fromkeys(("train", cfg.eval.split)):
        if sizes[split] == 0:
            hint = "add rows" if split == "train" else f"give a {split} file or raise its fraction"
            raise OsrmError(
                f"tasks: task {spec.name!r} has no {split} examples (splits: "
                f"{', '.join(f'{k} {v}' for k, v in sizes.items())}); {hint}"
            )


def check_rank(cfg: ExperimentConfig, model: torch.nn.Module) -> None:
    """LoRA's rank cannot exceed a target module's input dimension (OSRM's bases are r of d)."""
    for name, module in find_target_modules(model, cfg.lora.target_modules).items():
        if cfg.lora.rank > input_dim(module):
            raise OsrmError(
                f"lora.rank {cfg.lora.rank} exceeds the input dimension {input_dim(module)} "
                f"of target module {name}"
            )
