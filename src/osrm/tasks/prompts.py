"""Prompt templates and verbalisers of generative tasks: a default for every built-in
classification task, and the rules a task block's own ``prompt`` must follow.

A template holds ``{text}`` (and ``{text_pair}`` for pair tasks) and may hold ``{choices}`` (the
verbalisers joined by commas); nothing else in it is interpreted, so braces in the user's text
are kept. A verbaliser is the answer of one label, in ``label_names`` order; by default the label
name with ``_`` read as a space, after one leading space (how a decoder's tokenizer sees a word
that follows the prompt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from osrm.errors import OsrmError
from osrm.tasks.spec import TaskSpec


@dataclass(frozen=True)
class Prompt:
    """A task's template and verbalisers (None: from its label names)."""

    template: str
    verbalisers: tuple[str, ...] | None = None


_PLACEHOLDER = re.compile(r"(\{text\}|\{text_pair\}|\{choices\})")  # split keeps them
SINGLE = "Text: {text}\nAnswer ({choices}):"
PAIR = "Text 1: {text}\nText 2: {text_pair}\nAnswer ({choices}):"
_SENTIMENT = "Review: {text}\nSentiment ({choices}):"
_ENTAIL = (
    "Premise: {text}\nHypothesis: {text_pair}\nDoes the premise entail the hypothesis ({choices})?"
)
_PARAPHRASE = "Sentence 1: {text}\nSentence 2: {text_pair}\nSame meaning ({choices})?"

# built-in classification tasks (osrm.tasks.registry.TASKS); the rest get SINGLE / PAIR
PROMPTS: dict[str, Prompt] = {
    "cola": Prompt("Sentence: {text}\nGrammatical ({choices})?", (" no", " yes")),
    "sst2": Prompt(_SENTIMENT),
    "mrpc": Prompt(_PARAPHRASE, (" no", " yes")),
    "qqp": Prompt(
        "Question 1: {text}\nQuestion 2: {text_pair}\nSame question ({choices})?", (" no", " yes")
    ),  # fmt: skip
    "mnli": Prompt("Premise: {text}\nHypothesis: {text_pair}\nRelation ({choices}):"),
    "qnli": Prompt(
        "Question: {text}\nSentence: {text_pair}\nDoes the sentence answer the "
        "question ({choices})?",
        (" yes", " no"),
    ),  # fmt: skip
    "rte": Prompt(_ENTAIL, (" yes", " no")),
    "rotten_tomatoes": Prompt("Movie review: {text}\nVerdict ({choices}):"),
    "trec": Prompt(
        "Question: {text}\nThe answer is a ({choices}):",
        (" abbreviation", " entity", " description", " person", " location", " number"),
    ),
    "sms_spam": Prompt("Message: {text}\nSpam ({choices})?", (" no", " yes")),
    "tweet_sentiment": Prompt("Tweet: {text}\nSentiment ({choices}):"),
    "fine_foods": Prompt("Review: {text}\nIs the product great ({choices})?", (" no", " yes")),
    "vitaminc": Prompt(
        "Evidence: {text}\nClaim: {text_pair}\nThe evidence ({choices}):",
        (" supports", " is insufficient", " refutes"),
    ),  # fmt: skip
    "epistemic_reasoning": Prompt(_ENTAIL, (" yes", " no")),
    "multiemo": Prompt(_SENTIMENT),
}


def task_prompt(spec: TaskSpec) -> Prompt:
    """``spec``'s prompt, checked: its own ``prompt`` / ``verbalisers``, else the built-in
    default (:data:`PROMPTS`), else the generic template and the label names."""
    if spec.is_regression:
        raise OsrmError(
            f"task '{spec.name}': a regression task cannot be generated (no labels to verbalise); "
            "keep it head-only (format: classify)"
        )
    default = PROMPTS.get(spec.name) or Prompt(PAIR if spec.is_pair else SINGLE)
    template = spec.prompt or default.template
    names = spec.label_names or ()
    verbalisers = (
        spec.verbalisers or default.verbalisers or tuple(" " + n.replace("_", " ") for n in names)
    )
    if len(verbalisers) != len(names) or len(set(verbalisers)) != len(names):
        raise OsrmError(f"task '{spec.name}': expected {len(names)} distinct verbalisers (one "
                        f"per label {list(names)}), got {list(verbalisers)}")  # fmt: skip
    need = ["{text}", *(["{text_pair}"] if spec.is_pair else [])]
    missing = [f for f in need if f not in template]
    if missing or (not spec.is_pair and "{text_pair}" in template):
        raise OsrmError(f"task '{spec.name}': the prompt template must hold {' and '.join(need)}"
                        f"{'' if spec.is_pair else ' (and no {text_pair})'}, got "
                        f"{template!r}")  # fmt: skip
    return Prompt(template, tuple(verbalisers))


def render(prompt: Prompt, text: str, text_pair: str | None = None) -> str:
    """The prompt of one example; braces inside the texts are kept as they are."""
    values = {"{text}": text, "{text_pair}": text_pair or "",
              "{choices}": ", ".join(v.strip() for v in prompt.verbalisers or ())}  # fmt: skip
    return "".join(values.get(part, part) for part in _PLACEHOLDER.split(prompt.template))
