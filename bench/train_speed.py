"""Benchmark: seconds per training step with dynamic padding vs padding to max length 128, and
the cost of ``train.interference_penalty``.

The reference OSRM code pads every sequence to 128 tokens; osrm pads each batch to its longest
sequence. Same model (all-MiniLM-L6-v2, LoRA r=8 on query/value + head), same examples in the same
order, same run; the settings alternate and the median over repeats is reported. The penalty
setting is dynamic padding plus the closed-form interference penalty (osrm.constraints) on seeded
random (d, d) second moments: its cost does not depend on their values.

    python bench/train_speed.py [--task rotten_tomatoes] [--steps 20] [--repeats 3] [--json F]
"""

from __future__ import annotations

import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402

import common  # noqa: E402
from osrm.adapters import attach_lora, lora_layers  # noqa: E402
from osrm.config import TrainSection  # noqa: E402
from osrm.constraints import interference_penalty  # noqa: E402
from osrm.models import load_model  # noqa: E402
from osrm.tasks.batching import batches, encode  # noqa: E402
from osrm.tasks.registry import get_task, load_task  # noqa: E402
from osrm.train import train  # noqa: E402


def random_moments(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (C_own, C_other): seeded random (d_in, d_in) second moments."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, layer in lora_layers(model).items():
        d = layer.lora_A["default"].weight.shape[1]
        x = torch.randn(2, 4 * d, d, generator=g, dtype=torch.float64)
        out[name] = (x[0].T @ x[0] / (4 * d), x[1].T @ x[1] / (4 * d))
    return out


def seconds_per_step(
    task: str, steps: int, pad_to_max: bool, max_length: int, penalty: bool = False
) -> tuple[float, int]:
    spec = get_task(task)
    torch.manual_seed(0)
    model, tok = load_model("sentence-transformers/all-MiniLM-L6-v2", spec.num_labels)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = attach_lora(model, lora)
    data = load_task(spec, "train", max_examples=steps * 16)
    enc = encode(data, tok, max_length)

    def epoch(e: int):
        return batches(
            enc, tok, 16, shuffle=True, seed=e, pad_to_max_length=pad_to_max, max_length=max_length
        )

    cfg = TrainSection(steps=steps, lr=1e-3, batch_size=16, checkpoint_every=0)
    extra = interference_penalty(model, random_moments(model)) if penalty else None
    result = train(model, epoch, cfg, progress=False, penalty=extra)
    return result.seconds / result.steps, result.tokens


def main() -> dict:
    parser = common.new_parser(__doc__)
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    common.add_json(parser)
    args = parser.parse_args()
    common.setup_torch()
    runs: dict[str, list[float]] = {"dynamic": [], "max_length": [], "penalty": []}
    settings = (("dynamic", False, False), ("max_length", True, False), ("penalty", False, True))
    for _ in range(args.repeats):
        for name, pad, penalty in settings:
            s, tokens = seconds_per_step(args.task, args.steps, pad, args.max_length, penalty)
            runs[name].append(s)
    dyn, fixed = statistics.median(runs["dynamic"]), statistics.median(runs["max_length"])
    pen = statistics.median(runs["penalty"])
    result = {
        "benchmark": "train_speed", "model": "all-MiniLM-L6-v2", "task": args.task,
        "steps": args.steps, "batch_size": 16, "max_length": args.max_length,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "real_tokens": tokens,
        "dynamic_s_per_step": dyn, "max_length_s_per_step": fixed, "speedup": fixed / dyn,
        "penalty_s_per_step": pen, "penalty_cost": pen / dyn,
    }  # fmt: skip
    common.print_summary(
        f"{args.task}: {args.steps} steps x 16 examples, {tokens} real tokens, "
        f"median of {args.repeats}",
        [
            f"dynamic padding (osrm)      : {dyn:.3f} s/step",
            f"padding to {args.max_length} (reference) : {fixed:.3f} s/step",
            f"ratio dynamic / fixed       : {dyn / fixed:.3f} (speed-up {fixed / dyn:.2f}x)",
            f"dynamic + penalty           : {pen:.3f} s/step (x{pen / dyn:.3f} of dynamic)",
        ],
    )
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
