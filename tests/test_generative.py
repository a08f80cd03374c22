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
    evaluate_generative,
    greedy_answers,
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


class EveryLogit(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: every position's logits come back."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids)  # fmt: skip


def tiny_gpt2():
    """Learned absolute positions: left padding scores right only with the right position_ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     pad_token_id=0, eos_token_id=3, bos_token_id=2)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("model", ["llama", "gpt2", "no-logits-to-keep"])
@pytest.mark.parametrize("verbalisers", [["w10", "w11", "w12"], ["w10", "w11 w12", "w13 w14 w15"]],
                         ids=["single-token", "multi-token"])  # fmt: skip
def test_verbaliser_scores_equal_direct_log_likelihoods(lm, verbalisers, model):
    tok = tiny_decoder_tokenizer()
    lm = {"llama": lm, "gpt2": tiny_gpt2(), "no-logits-to-keep": EveryLogit(lm)}[model]
    got = verbaliser_logprobs(lm, tok, PROMPTS, verbalisers, batch_size=2)
    assert got.shape == (3, 3) and got.dtype == torch.float64
    for i, prompt in enumerate(PROMPTS):
        head = tok(prompt)["input_ids"]
        for k, answer in enumerate(answer_ids(tok, verbalisers)):
            want = direct_logprob(lm, head + answer, len(head))
            assert float(got[i, k]) == pytest.approx(want, abs=1e-5), (i, k)


def manual_greedy(lm, tok, prompt: str, steps: int) -> str:
    """Greedy decoding one token at a time, one unpadded sequence, no generate()."""
    ids = tok(prompt)["input_ids"]
    new = []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(lm(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        new.append(nxt)
    return tok.decode(new).strip()


def test_greedy_answers_and_exact_match_equal_a_manual_greedy_loop(lm):
    """Left-padded batched generation gives each prompt's own greedy answer; exact match is the
    share of answers equal to the label's verbaliser."""
    from dataclasses import replace

    from datasets import Dataset

    from osrm.tasks.registry import TASKS

    tok = tiny_decoder_tokenizer()
    torch.manual_seed(1)
    with torch.no_grad():  # w60 likely after some prompts, not others; eos right after w60
        lm.lm_head.weight[60] += 3 * lm.lm_head.weight[7]
        lm.model.embed_tokens.weight[60] *= 50  # dominates the residual stream after it
        lm.lm_head.weight[3] = 0.5 * lm.model.embed_tokens.weight[60]
    want = [manual_greedy(lm, tok, p, 2) for p in PROMPTS]
    assert greedy_answers(lm, tok, PROMPTS, 2, max_length=32, batch_size=2) == want
    spec = replace(TASKS["rotten_tomatoes"], format="generate", prompt="{text}",
                   verbalisers=(" w60", " w61"))  # fmt: skip
    data = Dataset.from_dict({"text": PROMPTS, "label": [0, 1, 0]})
    scores = evaluate_generative(lm, spec, data, tokenizer=tok, max_length=32, batch_size=2,
                                 exact_match=True)  # fmt: skip
    hits = [w == v for w, v in zip(want, ["w60", "w61", "w60"], strict=True)]
    assert scores["exact_match"] == pytest.approx(sum(hits) / 3)
    assert want == ["w60", "", "w36"] and sum(hits) == 1  # a hit, an eos, a wrong word


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
    from dataclasses import replace

    from osrm.tasks.prompts import render, task_prompt
    from osrm.tasks.registry import TASKS

    def spec(name: str, **options):
        return replace(TASKS[name], format="generate", **options)

    p = task_prompt(spec("rte", prompt="{text_pair} <- {text} ({choices})?"))
    assert render(p, "a {text_pair}", "b") == "b <- a {text_pair} (yes, no)?"
    generic = task_prompt(spec("tweet_sentiment", prompt="Tweet: {text}"))
    assert generic.verbalisers == (" negative", " neutral", " positive")
    bad = [(spec("trec", verbalisers=[" a", " b"]), "expected 6 distinct verbalisers"),
           (spec("trec", prompt="{text} {text_pair}"), "and no {text_pair}"),
           (spec("rte", prompt="{text}"), "must hold {text} and {text_pair}"),
           (spec("sms_spam", verbalisers=[" x", " x"]), "distinct verbalisers")]  # fmt: skip
    for s, message in bad:
        with pytest.raises(OsrmError, match=message.replace("{", r"\{").replace("}", r"\}")):
            task_prompt(s)
    with pytest.raises(OsrmError, match="regression task cannot be generated"):
        replace(TASKS["vader_movies"], format="generate")
    with pytest.raises(OsrmError, match="apply to format: generate only"):
        replace(TASKS["trec"], prompt="{text}")


# ------------------------------------------------------------------ osrm run, end to end


def test_osrm_run_generative_tasks_on_a_tiny_llama(tmp_path, lm, monkeypatch):
    """Statistics on the prompts, adapters with no head that load in vanilla peft, verbaliser
    scores for base (zero-shot, scored once for all inits), individual and merged models; a mixed
    run is refused."""
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    import osrm
    from conftest import write_synthetic_tasks
    from osrm.cli import main
    from osrm.report import read_results
    from osrm.stats import load_stats
    from osrm.tasks.prompts import render, task_prompt
    from osrm.tasks.registry import load_task, task_from_dict

    model_dir = tmp_path / "tiny-lm"
    lm.save_pretrained(model_dir)
    tiny_decoder_tokenizer().save_pretrained(model_dir)
    (tmp_path / "data").mkdir()
    blocks = [b for b in write_synthetic_tasks(tmp_path / "data", n=64) if b["name"] != "reg"]
    answers = {"low": [" w60", " w61"], "high": [" w60", " w61", " w62"]}
    for b in blocks:
        b.update(format="generate", verbalisers=answers[b["name"]])
    config = tmp_path / "gen.yaml"
    config.write_text(json.dumps({
        "run_dir": str(tmp_path / "run"), "model": {"name": str(model_dir)}, "tasks": blocks,
        "lora": {"rank": 2, "inits": ["lora", "osrm"], "target_modules": ["q_proj", "v_proj"]},
        "stats": {"examples": 16, "max_length": 24, "batch_size": 8},
        "train": {"steps": 4, "batch_size": 8, "max_length": 24, "lr": 1e-2},
        "eval": {"max_eval_examples": 12},
        "merge": {"methods": {"task_arithmetic": {"scale": [1.0]}}, "save": True},
    }))  # fmt: skip
    import osrm.stages.evaluation as stage

    scored, evaluate = [], stage.evaluate
    monkeypatch.setattr(stage, "evaluate", lambda *a, **k: scored.append(1) or evaluate(*a, **k))
    assert main(["-q", "run", str(config)]) == 0
    # per task: 2 individual adapters, 2 merges (one per init), the base model once
    assert len(scored) == 2 * 5
    run = tmp_path / "run"
    rows = read_results(run / "results.jsonl")
    base = {(r.init, r.task): r.scores for r in rows if r.kind == "base"}
    assert base[("lora", "low")] == base[("osrm", "low")] and len(base) == 4
    kinds = {(r.init, r.kind, r.task) for r in rows}
    for init in ("lora", "osrm"):
        for task in ("low", "high"):
            assert {(init, k, task) for k in ("base", "individual", "merged")} <= kinds
    weights = load_file(run / "adapters" / "osrm" / "low" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)  # no head
    peft_config = json.loads((run / "adapters/osrm/low/adapter_config.json").read_text())
    assert peft_config["task_type"] == "CAUSAL_LM"
    PeftModel.from_pretrained(lm, run / "adapters" / "osrm" / "low")  # vanilla peft loads it
    # statistics count the prompt tokens (first stats.max_length of each), not the answers
    spec = task_from_dict(blocks[0])
    prompt = task_prompt(spec)
    data = load_task(spec, "train", seed=0, max_examples=16)
    tok = tiny_decoder_tokenizer()
    tokens = sum(min(24, len(tok(render(prompt, t))["input_ids"])) for t in data["text"])
    _, meta = load_stats(run / "stats" / "low.safetensors")
    assert meta.n_tokens == tokens
    # osrm merge of the headless adapters: the merged causal LM, base + ΔW, loadable as such
    from transformers import AutoModelForCausalLM

    from osrm.merging import merge_adapters

    dirs = [str(run / "adapters" / "osrm" / t) for t in ("low", "high")]
    assert main(["-q", "merge", *dirs, "--method", "ties", "--out", str(tmp_path / "m")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    deltas = merge_adapters(dirs, "ties")
    base = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    for name, param in merged.named_parameters():
        want = base[name] + deltas[name] if name in deltas else base[name]
        assert torch.allclose(param, want, atol=1e-6), name
    assert deltas and all(name in base for name in deltas)
    # merge.save wrote the same merged causal LM as osrm merge, with the prompts recorded
    saved = run / "merged" / "osrm" / "task_arithmetic" / "scale=1.0"
    assert osrm.load_merged(saved).tasks == ["low", "high"]
    # osrm predict on a merged generative model gives back the pipeline's merged score
    rows_ta = {r.task: r.score for r in rows if (r.init, r.kind, r.method) ==
               ("osrm", "merged", "task_arithmetic")}  # fmt: skip
    ta = tmp_path / "ta"
    assert main(["-q", "merge", *dirs, "--method", "task_arithmetic", "--out", str(ta)]) == 0
    for i, name in enumerate(("low", "high")):
        test = load_task(task_from_dict(blocks[i]), "test", seed=0, max_examples=12)
        inputs = tmp_path / f"{name}.jsonl"
        inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in test["text"]))
        out = tmp_path / f"{name}.out.jsonl"
        assert main(["-q", "predict", str(ta), "--task", name, "--input", str(inputs),
                     "--max-length", "24", "--out", str(out)]) == 0  # fmt: skip
        records = [json.loads(line) for line in out.read_text().splitlines()]
        names = blocks[i]["label_names"]
        hits = [r["label"] == names[y] for r, y in zip(records, test["label"], strict=True)]
        assert sum(hits) / len(hits) == pytest.approx(rows_ta[name], abs=1e-9), name
        assert all(0 < r["probability"] <= 1 for r in records)
    ours, pipeline = load_file(ta / "model.safetensors"), load_file(saved / "model.safetensors")
    assert ours.keys() == pipeline.keys() and all(torch.equal(ours[k], pipeline[k]) for k in ours)
    mixed = tmp_path / "mixed.yaml"
    text = json.loads(config.read_text())
    text["tasks"][1]["format"] = "classify"
    del text["tasks"][1]["verbalisers"]
    text["run_dir"] = str(tmp_path / "mixed")
    mixed.write_text(json.dumps(text))
    assert main(["run", str(mixed)]) == 2 and not (tmp_path / "mixed").exists()
