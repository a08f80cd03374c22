"""A merged model (or one adapter) as a predictor: ``osrm.load_merged(dir).predict(texts, task=t)``.

``dir`` is an output of ``osrm merge`` (a dense backbone or a merged LoRA adapter, with one head
per task in ``heads/``) or a single peft adapter with its head. The backbone loads once; each
task's head is swapped in for its predictions (:func:`osrm.heads.use_head`). Inputs are batched
as ``osrm eval`` batches them (length-grouped, dynamic padding), so the predictions on a task's
test split give exactly the metric that ``osrm eval`` reports.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from osrm.adapters import load_adapter
from osrm.errors import OsrmError, one_line
from osrm.evaluate import logits_over
from osrm.generative import verbaliser_logprobs
from osrm.heads import adapter_head, head_outputs, read_head, use_head
from osrm.merging import MANIFEST_FILE, lora_deltas, read_manifest
from osrm.models import cap_tokenizer, load_causal_lm, load_model, pad_with_eos, resolve_model
from osrm.safety import require_safetensors
from osrm.tasks.batching import batches, encode
from osrm.tasks.prompts import Prompt, render
from osrm.tasks.registry import TASKS
from osrm.tasks.spec import TaskSpec


@dataclass(frozen=True)
class Predictor:
    """A backbone with one head per task. ``kind``: ``dense``/``lora`` (merged) or ``adapter``."""

    path: Path
    kind: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    heads: Mapping[str, Mapping[str, Tensor]]  # task -> head parameters (base-model names)
    # generative tasks (a causal LM, no heads): task -> {"template", "verbalisers", "labels"}
    prompts: Mapping[str, Mapping] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """The tasks this model has a head (or, generative, a prompt) for."""
        return [*self.heads, *self.prompts]

    def check_task(self, task: str) -> str:
        """``task``, when this model can answer it."""
        if task not in self.tasks:
            raise OsrmError(f"{self.path}: no head for task {task!r}; tasks: {self.tasks}")
        return task

    @contextmanager
    def for_task(self, task: str) -> Iterator[nn.Module]:
        """The model with ``task``'s head on it (generative: as it is), for the block."""
        head = self.heads.get(self.check_task(task), {})
        with use_head(self.model, head) as model:
            yield model

    def task_spec(self, spec: TaskSpec) -> TaskSpec:
        """``spec`` as this model answers it: a generative task gets its recorded prompt."""
        p = self.prompts.get(self.check_task(spec.name))
        if p is None:
            return spec
        return replace(spec, format="generate", prompt=p["template"],
                       verbalisers=tuple(p["verbalisers"]))  # fmt: skip

    def labels(self, task: str, given: Sequence[str] | None = None) -> list[str] | None:
        """``task``'s class names (None: a regression head), ``given`` or the built-in task's."""
        if task in self.prompts:  # a generative task's labels are those it was trained on
            return list(self.prompts[task]["labels"])
        outputs = head_outputs(self.heads[task]) if task in self.heads else 0
        spec = TASKS.get(task)
        names = list(given) if given else (list(spec.label_names or []) if spec else [])
        if outputs == 1 and not given and (spec is None or spec.is_regression):
            return None
        if len(names) != outputs:
            raise OsrmError(
                f"task {task!r}: its head has {outputs} outputs but "
                + (f"{len(names)} label names were given" if given or spec else "it is not a "
                   "built-in task; pass its label names (--labels NAME,NAME,...)")
            )  # fmt: skip
        return names

    def predict(
        self,
        texts: Sequence[str],
        task: str,
        *,
        text_pairs: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        batch_size: int = 64,
        max_length: int = 128,
        progress: bool = False,
    ) -> list[dict]:
        """One record per text, in input order: ``label`` (name), ``label_id`` and
        ``probability`` (softmax) for classification, ``value`` for regression."""
        names = self.labels(task, label_names)
        if task in self.prompts:
            return self._generate(task, names, texts, text_pairs, batch_size, max_length)
        columns = {"text": list(texts), "label": list(range(len(texts)))}  # label: the index
        if text_pairs is not None:
            columns["text_pair"] = list(text_pairs)
        encoded = encode(Dataset.from_dict(columns), self.tokenizer, max_length)
        loader = batches(encoded, self.tokenizer, batch_size, group_by_length=True)
        with self.for_task(task) as model:
            logits, order = logits_over(model, loader, progress=progress)
        out: list[dict] = [{} for _ in texts]
        for row, index in zip(logits, order.tolist(), strict=True):
            out[index] = _record(index, row, names)
        return out

    def _generate(
        self, task: str, names: Sequence[str], texts, pairs, batch_size: int, max_length: int
    ) -> list:
        """Records of a generative task: each label's probability is its verbaliser's
        likelihood, normalised over the labels."""
        p = self.prompts[task]
        prompt = Prompt(p["template"], tuple(p["verbalisers"]))
        pairs = pairs if pairs is not None else [None] * len(texts)
        filled = [render(prompt, t, q) for t, q in zip(texts, pairs, strict=True)]
        scores = verbaliser_logprobs(self.model, self.tokenizer, filled, prompt.verbalisers,
                                     max_length=max_length, batch_size=batch_size)  # fmt: skip
        return [_record(i, row, names) for i, row in enumerate(scores)]


def _record(index: int, logits: Tensor, names: Sequence[str] | None) -> dict:
    if names is None:
        return {"index": index, "value": float(logits[0])}
    probs = torch.softmax(logits.double(), -1)
    k = int(logits.argmax())  # argmax of the logits, as osrm eval scores
    return {"index": index, "label": names[k], "label_id": k, "probability": float(probs[k])}


def load_merged(path: str | Path, base: str | None = None) -> Predictor:
    """A merged output of ``osrm merge`` (dense or LoRA) or a peft adapter, as a
    :class:`Predictor`; ``base`` overrides the base model the files record."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        manifest = read_manifest(path)
        heads = {t: read_head(path, t) for t in manifest.get("heads") or {}}
        prompts = {s["task"]: s["prompt"] for s in manifest.get("sources", []) if s.get("prompt")}
        if not heads and not prompts:
            raise OsrmError(f"{path / MANIFEST_FILE}: lists no task heads and no prompts")
        base = _base_name(base or manifest.get("base_model"), path / MANIFEST_FILE,
                          "base_model (adapters of different or unnamed bases)")  # fmt: skip
        kind = "lora" if manifest.get("output") == "lora" else "dense"
        if kind == "lora":
            inside = manifest.get("adapter_head")
            head = read_head(path, inside) if inside else next(iter(heads.values()), None)
            model, tokenizer = _with_adapter(base, path, head)
        else:
            model, tokenizer = _dense(path, base, generate=not heads)
    elif (path / "adapter_config.json").is_file():
        require_safetensors(path)
        deltas = lora_deltas(path)
        base = _base_name(base or deltas.base_model, path / "adapter_config.json", "base model")
        prompt = deltas.provenance.get("prompt")
        head = None if prompt else adapter_head(path)
        kind, heads = "adapter", {deltas.task: head} if head else {}
        prompts = {deltas.task: prompt} if prompt else {}
        model, tokenizer = _with_adapter(base, path, head)
    else:
        raise OsrmError(
            f"{path}: neither a merged output ({MANIFEST_FILE}) nor a peft adapter "
            "(adapter_config.json)"
        )
    return Predictor(path, kind, model.eval(), tokenizer, heads, prompts)


def _base_name(name: str | None, where: Path, what: str) -> str:
    if not name:
        raise OsrmError(f"{where}: names no {what}; pass --base")
    return name


def _with_adapter(
    base: str, adapter: Path, head: Mapping[str, Tensor] | None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The base model with a (merged or single) LoRA adapter folded into its weights: a
    classifier sized for ``head``, or (no head: generative tasks) the causal LM."""
    model, tokenizer = load_model(base, head_outputs(head)) if head else load_causal_lm(base)
    return load_adapter(model, adapter).merge_and_unload(), tokenizer


def _dense(path: Path, base: str, generate: bool) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A dense merged model (a classifier with its first head, or the causal LM) and the base
    model's tokenizer."""
    tokenizer = pad_with_eos(AutoTokenizer.from_pretrained(resolve_model(base)), base)
    auto = AutoModelForCausalLM if generate else AutoModelForSequenceClassification
    try:
        model = auto.from_pretrained(str(path), use_safetensors=True)
    except (OSError, ValueError) as e:
        raise OsrmError(f"{path}: cannot load the merged model ({one_line(e)[:300]})") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    cap_tokenizer(tokenizer, model.config)
    return model, tokenizer
