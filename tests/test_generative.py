"""Generative tasks on a tiny random Llama: the loss falls on the answer tokens only, and
verbaliser scoring equals a direct log-likelihood computation, sequence by sequence."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from osrm.errors import OsrmError
from osrm.generative import (
    IGNORE,
    answer_ids,
    pad_batch,
    training_example,
    verbaliser_logprobs,
)

VOCAB = 64


def tiny_decoder_tokenizer() -> PreTrainedTokenizerFast:
    """Word level: <pad>=0, <unk>=1, <s>=2, </s>=3, then w4..w63; no special tokens added."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")  # fmt: skip


@pytest.fixture
def lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=3, bos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


PROMPTS = ["w4 w5 w6 w7", "w8 w9", "w20 w21 w22 w23 w24 w25 w26"]  # three lengths: padding


def direct_logprob(lm, ids: list[int], start: int) -> float:
    """Σ_{t >= start} log p(ids[t] | ids[:t]) from one unpadded forward, in float64."""
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_training_example_masks_the_prompt_and_keeps_its_end():
    tok = tiny_decoder_tokenizer()
    ex = training_example(tok, "w4 w5 w6 w7", [10, 11], max_length=16)
    assert ex["input_ids"] == [4, 5, 6, 7, 10, 11, 3]  # prompt, answer, eos
    assert ex["labels"] == [IGNORE] * 4 + [10, 11, 3]
    cut = training_example(tok, "w4 w5 w6 w7", [10, 11], max_length=5)
    assert cut["input_ids"] == [6, 7, 10, 11, 3]  # the prompt's beginning goes
    with pytest.raises(OsrmError, match="no room for the prompt"):
        training_example(tok, "w4", [10, 11], max_length=3)


def test_loss_is_the_answer_tokens_cross_entropy_only(lm):
    tok = tiny_decoder_tokenizer()
    rows = [training_example(tok, p, [10 + i], 32) for i, p in enumerate(PROMPTS)]
    batch = pad_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        loss = float(lm(**batch).loss)
    # by hand: the mean over the answer and eos tokens of -log p(token | prefix), unpadded
    terms = []
    for r in rows:
        start = r["labels"].index(next(x for x in r["labels"] if x != IGNORE))
        for t in range(start, len(r["input_ids"])):
            terms.append(-direct_logprob(lm, r["input_ids"][: t + 1], t))
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # the prompt's tokens are not predicted: the unmasked loss differs
    unmasked = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0,
                                                                  IGNORE)}  # fmt: skip
    with torch.no_grad():
        assert float(lm(**unmasked).loss) != pytest.approx(loss, rel=1e-3)


@pytest.mark.parametrize("verbalisers", [["w10", "w11", "w12"], ["w10", "w11 w12", "w13 w14 w15"]],
                         ids=["single-token", "multi-token"])  # fmt: skip
def test_verbaliser_scores_equal_direct_log_likelihoods(lm, verbalisers):
    tok = tiny_decoder_tokenizer()
    got = verbaliser_logprobs(lm, tok, PROMPTS, verbalisers, batch_size=2)
    assert got.shape == (3, 3) and got.dtype == torch.float64
    for i, prompt in enumerate(PROMPTS):
        head = tok(prompt)["input_ids"]
        for k, answer in enumerate(answer_ids(tok, verbalisers)):
            want = direct_logprob(lm, head + answer, len(head))
            assert float(got[i, k]) == pytest.approx(want, abs=1e-5), (i, k)


def test_verbalisers_must_be_distinct_token_sequences():
    tok = tiny_decoder_tokenizer()
    with pytest.raises(OsrmError, match="distinct, non-empty"):
        answer_ids(tok, ["w10", "w10"])
    with pytest.raises(OsrmError, match="distinct, non-empty"):
        answer_ids(tok, ["w10", ""])


# ------------------------------------------------------------------ prompts


def test_every_built_in_classification_task_has_a_prompt_that_fits():
    from transformers import AutoTokenizer

    from osrm.models import resolve_model
    from osrm.tasks.prompts import render, task_prompt
    from osrm.tasks.registry import TASKS

    smol = AutoTokenizer.from_pretrained(resolve_model("smollm2"))  # the decoder of the demo
    for spec in TASKS.values():
        if spec.is_regression:
            with pytest.raises(OsrmError, match="regression task cannot be generated"):
                task_prompt(spec)
            continue
        prompt = task_prompt(spec)
        assert len(prompt.verbalisers) == spec.num_labels
        answer_ids(smol, prompt.verbalisers)  # distinct, non-empty token sequences
        text = render(prompt, "T1 {text}", "T2" if spec.is_pair else None)
        assert "T1 {text}" in text and ("T2" in text) == spec.is_pair and "{choices}" not in text


def test_prompt_rules_and_rendering():
    from osrm.tasks.prompts import Prompt, render, task_prompt
    from osrm.tasks.registry import TASKS

    trec, rte = TASKS["trec"], TASKS["rte"]
    p = task_prompt(rte, Prompt("{text_pair} <- {text} ({choices})?", (" yes", " no")))
    assert render(p, "a {text_pair}", "b") == "b <- a {text_pair} (yes, no)?"
    generic = task_prompt(TASKS["tweet_sentiment"], Prompt("Tweet: {text}"))
    assert generic.verbalisers == (" negative", " neutral", " positive")
    bad = [(trec, Prompt("{text}", (" a", " b")), "expected 6 distinct verbalisers"),
           (trec, Prompt("{text} {text_pair}"), "and no {text_pair}"),
           (rte, Prompt("{text}"), "must hold {text} and {text_pair}"),
           (TASKS["sms_spam"], Prompt("{text}", (" x", " x")), "distinct verbalisers")]  # fmt: skip
    for spec, prompt, message in bad:
        with pytest.raises(OsrmError, match=message.replace("{", r"\{").replace("}", r"\}")):
            task_prompt(spec, prompt)
