"""Generative tasks on decoders: ``prompt → answer``, with no task head.

A classification example becomes the prompt (the task's template filled with its text) followed
by the verbaliser of its label (``" positive"``) and the end-of-sequence token. Training computes
the causal-LM loss on the answer tokens only (the prompt's labels are ``IGNORE``); scoring takes,
for every label, the log-likelihood of its verbaliser after the prompt and predicts the most
likely label, so the task's usual metric applies. Prompt and answer are tokenised apart and
concatenated, so a verbaliser has the same tokens in training and in scoring; a prompt too long
for ``max_length`` loses its beginning (its end holds the question).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from inspect import signature

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from osrm.errors import OsrmError
from osrm.metrics import compute_metrics
from osrm.tasks.prompts import render, task_prompt
from osrm.tasks.spec import TaskSpec

IGNORE = -100  # label of a token the loss skips (transformers' convention)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def answer_ids(tokenizer: PreTrainedTokenizerBase, verbalisers: Sequence[str]) -> list[list[int]]:
    """Each verbaliser's tokens (no special tokens); distinct and non-empty, or an error."""
    ids = [_ids(tokenizer, v, False) for v in verbalisers]
    if any(not i for i in ids) or len({tuple(i) for i in ids}) != len(ids):
        raise OsrmError(f"verbalisers {list(verbalisers)}: each must give distinct, non-empty "
                        "tokens with this tokenizer")  # fmt: skip
    return ids


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, room: int) -> list[int]:
    """The prompt's tokens (with the tokenizer's special tokens), cut to its last ``room``."""
    if room < 1:
        raise OsrmError(f"max_length leaves no room for the prompt ({room} tokens)")
    return _ids(tokenizer, prompt, True)[-room:]


def training_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: list[int], max_length: int
) -> dict[str, list[int]]:
    """``input_ids`` = prompt + answer + eos and ``labels`` = IGNORE over the prompt, the
    answer's tokens and eos after it (the loss falls on the answer alone)."""
    tail = [*answer, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])]
    head = prompt_ids(tokenizer, prompt, max_length - len(tail))
    return {"input_ids": head + tail, "labels": [IGNORE] * len(head) + tail}


def pad_batch(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded (batch, seq) ``input_ids``, ``attention_mask`` and (when given) ``labels``."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for r in rows:
        gap = width - len(r["input_ids"])
        out["input_ids"].append(r["input_ids"] + [pad_id] * gap)
        out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * gap)
        out["labels"].append(r.get("labels", r["input_ids"]) + [IGNORE] * gap)
    return {k: torch.tensor(v) for k, v in out.items()}


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> dict[str, Tensor]:
    """Left-padded (batch, seq) ``input_ids``, ``attention_mask`` and ``position_ids`` (0 at each
    sequence's first token): every sequence ends in the last column, where scoring and
    generation read it."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}  # fmt: skip


def verbaliser_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    verbalisers: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 32,
) -> Tensor:
    """(n, k) float64: log p(verbaliser k | prompt i), the sum over the verbaliser's tokens.

    One forward per (prompt, verbaliser) pair, batched; with single-token verbalisers one
    forward per prompt gives every label (the next-token distribution after the prompt). Only
    the positions that predict answer tokens go through the output layer and the softmax.
    """
    answers = answer_ids(tokenizer, verbalisers)
    longest = max(len(a) for a in answers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    heads = [prompt_ids(tokenizer, p, max_length - longest) for p in prompts]
    if longest == 1:  # all single tokens: one forward per prompt
        cols = torch.tensor([a[0] for a in answers])
        return torch.cat([_last_logprobs(model, left_pad(chunk, pad), 1)[:, 0, cols]
                          for chunk in _chunks(heads, batch_size)])  # fmt: skip
    pairs = [(h + a, len(a)) for h in heads for a in answers]
    sums = []
    for chunk in _chunks(pairs, batch_size):
        batch = left_pad([seq for seq, _ in chunk], pad)
        width = batch["input_ids"].shape[1]
        keep = min(longest + 1, width)  # the last answer token needs no prediction after it
        logp = _last_logprobs(model, batch, keep)[:, :-1]  # column c predicts token c + 1
        spots = torch.arange(width - keep + 1, width)  # positions of the predicted tokens
        answer = spots[None, :] >= width - torch.tensor([n for _, n in chunk])[:, None]
        target = batch["input_ids"][:, width - keep + 1 :]
        picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        sums.append((picked * answer).sum(1))
    return torch.cat(sums).view(len(prompts), len(answers))


def _last_logprobs(model: nn.Module, batch: dict[str, Tensor], keep: int) -> Tensor:
    """(batch, keep, vocab) float64 next-token log-probabilities at the last ``keep`` positions
    of a left-padded batch; models that accept ``logits_to_keep`` compute no other logits."""
    device = next(model.parameters()).device
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes = "logits_to_keep" in signature(inner.forward).parameters
    cut = {"logits_to_keep": keep} if takes else {}  # others: every logit, sliced below
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in batch.items()}, **cut).logits[:, -keep:]
    if not bool(torch.isfinite(logits).all()):
        raise OsrmError("the model's outputs (logits) hold NaN or Inf; not scored")
    return torch.log_softmax(logits.double(), -1).cpu()


# ------------------------------------------------------------------ tasks as prompts


def prompted(data: Dataset, spec: TaskSpec) -> Dataset:
    """A standardised split with ``text`` replaced by each example's prompt (no ``text_pair``):
    what the statistics of a generative task are collected on."""
    prompt = task_prompt(spec)
    pair = "text_pair" in data.column_names

    def fill(row: dict) -> dict:
        return {"text": render(prompt, row["text"], row["text_pair"] if pair else None)}

    out = data.map(fill)
    return out.remove_columns(["text_pair"]) if pair else out


def training_rows(
    data: Dataset, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict[str, list[int]]]:
    """Every example of a standardised split as a :func:`training_example` of its label."""
    prompt = task_prompt(spec)
    answers = answer_ids(tokenizer, prompt.verbalisers)
    pairs = data["text_pair"] if "text_pair" in data.column_names else [None] * len(data)
    return [training_example(tokenizer, render(prompt, t, p), answers[y], max_length)
            for t, p, y in zip(data["text"], pairs, data["label"], strict=True)]  # fmt: skip


def causal_batches(
    rows: Sequence[dict[str, list[int]]],
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Right-padded batches of :func:`training_rows` (seeded shuffle, as ``batches`` does)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(rows), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=lambda chunk: pad_batch(chunk, pad))  # fmt: skip


def greedy_answers(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new: int,
    *, max_length: int = 128, batch_size: int = 32,
) -> list[str]:  # fmt: skip
    """Each prompt's greedy continuation of at most ``max_new`` tokens, cut at the first eos
    or newline and stripped of surrounding spaces (batches left-padded, as generation needs)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    heads = [prompt_ids(tokenizer, p, max_length - max_new) for p in prompts]
    device, answers = next(model.parameters()).device, []
    for chunk in _chunks(heads, batch_size):
        batch = left_pad(chunk, pad)  # generate() derives the positions from the mask itself
        ids, width = batch["input_ids"].to(device), batch["input_ids"].shape[1]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=batch["attention_mask"].to(device),
                                 max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        for row in out[:, width:].tolist():
            end = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
            answers.append(tokenizer.decode(row[:end]).split("\n")[0].strip())
    return answers


def evaluate_generative(
    model: nn.Module, spec: TaskSpec, data: Dataset, *, tokenizer: PreTrainedTokenizerBase,
    max_length: int, batch_size: int, exact_match: bool = False,
) -> dict[str, float]:  # fmt: skip
    """The task's metrics, predicting for each example the label whose verbaliser is the most
    likely answer to its prompt; with ``exact_match`` also the share of examples whose greedy
    answer (up to the longest verbaliser's tokens + 1) is exactly the label's verbaliser."""
    prompt = task_prompt(spec)
    pairs = data["text_pair"] if "text_pair" in data.column_names else [None] * len(data)
    texts = [render(prompt, t, p) for t, p in zip(data["text"], pairs, strict=True)]
    scores = verbaliser_logprobs(model, tokenizer, texts, prompt.verbalisers,
                                 max_length=max_length, batch_size=batch_size)  # fmt: skip
    labels = np.asarray(data["label"])
    metrics = compute_metrics(spec.metrics, scores.argmax(-1).numpy(), labels)
    if exact_match:
        longest = max(len(a) for a in answer_ids(tokenizer, prompt.verbalisers))
        said = greedy_answers(model, tokenizer, texts, longest + 1, max_length=max_length,
                              batch_size=batch_size)  # fmt: skip
        want = [prompt.verbalisers[y].strip() for y in labels]
        metrics["exact_match"] = float(np.mean([s == w for s, w in zip(said, want, strict=True)]))
    return metrics
