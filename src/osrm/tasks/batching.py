"""Tokenisation and batching of standardised task datasets (:func:`osrm.tasks.registry.load_task`).

``encode`` tokenises without padding; ``batches`` pads each batch with transformers'
``DataCollatorWithPadding``: to the longest sequence of the batch by default, or to a fixed
``max_length`` (the reference code's behaviour, kept for speed comparisons).

Decoder-only tokenizers (Llama, GPT-2, SmolLM2) often have no pad token. Padding then needs one:
set ``tokenizer.pad_token = tokenizer.eos_token`` (and ``model.config.pad_token_id`` to match)
before calling :func:`batches`; we refuse to guess.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pyarrow.compute as pc
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from osrm.errors import OsrmError

MEGABATCH = 50  # length grouping sorts within windows of 50 batches, as transformers' Trainer


def encode(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, *, batch_size: int = 1000
) -> Dataset:
    """Tokenise ``text`` (and ``text_pair`` as the second segment), truncating to ``max_length``
    (at most the model's position limit: see :func:`osrm.models.cap_tokenizer`).

    Returns:
        Columns ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
        produces them) and ``labels`` (the ``label`` column), unpadded.
    """
    missing = {"text", "label"} - set(dataset.column_names)
    if missing:
        raise OsrmError(f"encode needs a standardised dataset; missing column '{min(missing)}'")
    pair = "text_pair" in dataset.column_names
    max_length = min(max_length, getattr(tokenizer, "osrm_max_positions", max_length))

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        second = batch["text_pair"] if pair else None  # pairs become two segments
        enc = tokenizer(batch["text"], second, truncation=True, max_length=max_length)
        return {**enc, "labels": batch["label"]}

    return dataset.map(
        tokenize, batched=True, batch_size=batch_size, remove_columns=dataset.column_names
    )


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar lengths, to waste little compute on padding.

    With ``shuffle``, a seeded permutation is cut into windows of ``MEGABATCH`` batches, each
    window is sorted by length (longest first) and cut into batches, and the batch order is
    shuffled; each pass draws a new order, as a seeded DataLoader shuffle does. Without
    ``shuffle`` the whole dataset is sorted by length (deterministic, no seed needed).
    """

    def __init__(self, lengths: list[int], batch_size: int, *, shuffle: bool, seed: int) -> None:
        self.lengths, self.batch_size, self.shuffle, self.seed = lengths, batch_size, shuffle, seed
        self.passes = 0

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{epoch}")  # str seeds go through SHA-512: portable
        order = list(range(len(self.lengths)))
        window = len(order)
        if self.shuffle:
            rng.shuffle(order)
            window = self.batch_size * MEGABATCH
        out = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            out += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        self.passes += 1
        return iter(self._batches(self.passes - 1))

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def batches(
    encoded: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
    pad_to_max_length: bool = False,
    max_length: int | None = None,
) -> DataLoader:
    """Iterate ``encoded`` (from :func:`encode`) as padded batches of tensors.

    ``shuffle`` is seeded (the same seed gives the same batches); ``group_by_length`` batches
    examples of similar lengths (:class:`LengthGroupedBatches`); ``pad_to_max_length`` pads every
    batch to ``max_length`` instead of the batch's longest. The last batch may be smaller.

    Returns:
        A DataLoader of dicts with ``input_ids``, ``attention_mask`` (and ``token_type_ids``),
        all (batch, seq), and ``labels`` (batch,), int64 class ids or float32 targets.
    """
    if tokenizer.pad_token is None:
        raise OsrmError(
            "tokenizer has no pad token: for a decoder model set tokenizer.pad_token = "
            "tokenizer.eos_token (and model.config.pad_token_id) before batching"
        )
    if pad_to_max_length and max_length is None:
        raise ValueError("pad_to_max_length=True needs max_length")
    collate = DataCollatorWithPadding(
        tokenizer,
        padding="max_length" if pad_to_max_length else "longest",
        max_length=max_length if pad_to_max_length else None,
        return_tensors="pt",
    )
    if group_by_length:
        lengths = pc.list_value_length(encoded.with_format("arrow")["input_ids"]).to_pylist()
        sampler = LengthGroupedBatches(lengths, batch_size, shuffle=shuffle, seed=seed)
        return DataLoader(encoded, batch_sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        encoded, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
    )
