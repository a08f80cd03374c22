"""Merging real peft adapters: lazy ΔW, identity, peft round trips, outputs, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from conftest import make_tiny_bert, make_tiny_llama, synthetic_batches
from osrm.adapters import lora_layers
from osrm.errors import OsrmError
from osrm.merging import (
    MANIFEST_FILE,
    METHODS,
    apply_deltas,
    coverage_gaps,
    file_sha256,
    load_head,
    lora_deltas,
    merge_adapters,
    read_manifest,
    save_merged_adapter,
    save_merged_model,
)
from osrm.stats import StatsMeta, collect_stats, load_stats, save_stats
from test_merging_methods import IDENTITY_HP

TARGETS = ["query", "value"]


def make_adapter(path, seed, r=4, alpha=8, make=make_tiny_bert, targets=TARGETS, **extra):
    """Save a peft LoRA whose A and B are random, with a random head; return (path, model)."""
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        task_type="SEQ_CLS",
        **extra,
    )
    model = get_peft_model(make(), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(str(path))
    return path, model.eval()


@pytest.fixture
def three(tmp_path):
    """Three adapters with different ranks, alphas, patterns and rsLoRA."""
    return [
        make_adapter(tmp_path / "sst2", 1, r=4, alpha=8)[0],
        make_adapter(tmp_path / "mrpc", 2, r=2, alpha=5, use_rslora=True)[0],
        make_adapter(
            tmp_path / "rte",
            3,
            r=3,
            alpha=6,
            alpha_pattern={"value": 2.5},
            rank_pattern={"layer.1.attention.self.query": 5},
        )[0],
    ]


def logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


BATCHES = synthetic_batches(7, 6, 3)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"layer.0.attention.self.query": 2}, "alpha_pattern": {"value": 3.0}},
    ],
)
def test_lora_deltas_equal_peft_delta_weights(tmp_path, extra):
    path, model = make_adapter(tmp_path / "a", 0, **extra)
    deltas = lora_deltas(path)
    layers = lora_layers(model)
    assert sorted(deltas) == sorted(f"{n}.weight" for n in layers)
    for name, layer in layers.items():
        torch.testing.assert_close(deltas[f"{name}.weight"], layer.get_delta_weight("default"))
    assert set(deltas.heads()) == {"classifier.weight", "classifier.bias"}


def test_fan_in_fan_out_layout_and_dense_merge(tmp_path):
    def make_gpt2():
        torch.manual_seed(0)
        cfg = GPT2Config(
            vocab_size=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            num_labels=3,
            pad_token_id=0,
        )
        return GPT2ForSequenceClassification(cfg).eval()

    path, model = make_adapter(
        tmp_path / "g", 0, make=make_gpt2, targets=["c_attn"], fan_in_fan_out=True
    )
    deltas = lora_deltas(path)
    for name, layer in lora_layers(model).items():  # peft returns the stored (d_in, d_out)
        torch.testing.assert_close(deltas[f"{name}.weight"].T, layer.get_delta_weight("default"))
    assert deltas.transposed == frozenset(deltas)
    out = save_merged_model(make_gpt2(), [path], tmp_path / "dense", "task_arithmetic")
    dense = GPT2ForSequenceClassification.from_pretrained(out)
    load_head(dense, out, "g")
    torch.testing.assert_close(logits(dense, BATCHES), logits(model, BATCHES), atol=1e-5, rtol=0)
    adapter = save_merged_adapter([path], tmp_path / "lora", "task_arithmetic", scale=0.5)
    peft_model = PeftModel.from_pretrained(make_gpt2(), adapter.path).eval()
    dense = load_head(make_gpt2(), adapter.path, "g")
    apply_deltas(dense, merge_adapters([path], "task_arithmetic", scale=0.5), deltas.transposed)
    torch.testing.assert_close(
        logits(peft_model, BATCHES), logits(dense, BATCHES), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_identity_merge_of_one_adapter(tmp_path, name):
    path, _ = make_adapter(tmp_path / "a", 0)
    hp = dict(IDENTITY_HP[name])
    if METHODS[name].needs_stats:
        hp["stats"] = [stats_file(tmp_path, "a", 0)]
    merged = merge_adapters([path], name, [1.0], **hp)
    expected = lora_deltas(path)
    assert merged.keys() == set(expected)
    for key, delta in merged.items():
        if name in ("knots", "tsv", "regmean"):
            torch.testing.assert_close(delta, expected[key], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(delta, expected[key])


def stats_file(tmp_path, task, seed):
    stats = collect_stats(make_tiny_bert(), synthetic_batches(seed, 8, 4), TARGETS, progress=False)
    n = next(iter(stats.values())).count
    path = tmp_path / f"{task}.stats.safetensors"
    save_stats(
        path,
        stats,
        StatsMeta(base_model="tiny-bert", fingerprint="x", task=task, n_examples=8, n_tokens=n),
    )
    return path


def test_task_arithmetic_of_different_ranks_is_the_weighted_sum(three):
    w = [0.5, 1.0, -0.3]
    merged = merge_adapters(three, "task_arithmetic", w, scale=0.8)
    sources = [lora_deltas(p) for p in three]
    for key, delta in merged.items():
        expected = 0.8 * sum(wi * s[key] for wi, s in zip(w, sources, strict=True))
        torch.testing.assert_close(delta, expected)


def test_concatenated_adapter_loads_in_peft_and_matches_dense_ta(three, tmp_path):
    w = [0.5, 1.0, -0.3]
    report = save_merged_adapter(three, tmp_path / "cat", "task_arithmetic", w, scale=0.8)
    assert report.exact and set(report.rel_errors.values()) == {0.0}
    assert report.ranks["bert.encoder.layer.1.attention.self.query.weight"] == 4 + 2 + 5
    peft_model = PeftModel.from_pretrained(make_tiny_bert(), report.path).eval()
    dense = load_head(make_tiny_bert(), report.path, "sst2")  # the head inside the adapter
    apply_deltas(dense, merge_adapters(three, "task_arithmetic", w, scale=0.8))
    torch.testing.assert_close(
        logits(peft_model, BATCHES), logits(dense, BATCHES), atol=1e-5, rtol=0
    )
    base = logits(load_head(make_tiny_bert(), report.path, "sst2"), BATCHES)
    assert (logits(dense, BATCHES) - base).abs().max() > 1e-3  # the merge did something
    load_head(peft_model, report.path, "rte")  # swap heads inside the PeftModel
    load_head(dense, report.path, "rte")
    torch.testing.assert_close(
        logits(peft_model, BATCHES), logits(dense, BATCHES), atol=1e-5, rtol=0
    )
    manifest = read_manifest(report.path)
    assert manifest["output"] == "lora" and manifest["weights"] == w
    assert manifest["hyperparameters"] == {"scale": 0.8}
    assert [s["adapter_sha256"] for s in manifest["sources"]] == [
        file_sha256(p / "adapter_model.safetensors") for p in three
    ]
    assert sorted(p.name for p in (report.path / "heads").iterdir()) == [
        "mrpc.safetensors",
        "rte.safetensors",
        "sst2.safetensors",
    ]


def test_truncated_adapter_reports_relative_error(three, tmp_path):
    report = save_merged_adapter(three, tmp_path / "ties", "ties", rank=3, density=0.5)
    assert not report.exact and set(report.ranks.values()) == {3}
    merged = merge_adapters(three, "ties", density=0.5)
    peft_model = PeftModel.from_pretrained(make_tiny_bert(), report.path)
    for name, layer in lora_layers(peft_model).items():
        delta = merged[f"{name}.weight"]
        approx = layer.get_delta_weight("default")
        err = float(torch.linalg.matrix_norm(delta - approx) / torch.linalg.matrix_norm(delta))
        assert abs(err - report.rel_errors[f"{name}.weight"]) < 1e-5 and 0 < err < 1
    exact = save_merged_adapter(three, tmp_path / "ta8", "task_arithmetic", rank=8)
    full = save_merged_adapter(three, tmp_path / "ta", "task_arithmetic")
    assert all(exact.rel_errors[n] <= 1e-6 for n, r in full.ranks.items() if r <= 8)
    assert max(exact.rel_errors.values()) > 0  # rank 11 query of layer 1 lost something


def test_dense_backbone_with_heads_reproduces_each_adapter(tmp_path):
    path, peft_model = make_adapter(tmp_path / "sst2", 4)
    out = save_merged_model(make_tiny_bert(), [path], tmp_path / "dense", "task_arithmetic")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    load_head(model, out, "sst2")
    torch.testing.assert_close(
        logits(model, BATCHES), logits(peft_model, BATCHES), atol=1e-5, rtol=0
    )
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["output"] == "dense" and manifest["method"] == "task_arithmetic"
    assert manifest["heads"] == {"sst2": "heads/sst2.safetensors"}
    assert (out / "model.safetensors").is_file()


def test_partial_modules_count_as_zero_and_are_reported(tmp_path, caplog):
    both, _ = make_adapter(tmp_path / "both", 1)
    query, _ = make_adapter(tmp_path / "query", 2, targets=["query"])
    merged = merge_adapters([both, query], "weight_average")
    a, b = lora_deltas(both), lora_deltas(query)
    key = "bert.encoder.layer.0.attention.self.value.weight"
    torch.testing.assert_close(merged[key], a[key] / 2)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(merged[q], (a[q] + b[q]) / 2)
    assert coverage_gaps([a, b]) == {k: [1] for k in a if "value" in k}
    assert "missing from some task vectors" in caplog.text
    report = save_merged_adapter([both, query], tmp_path / "out", "ties", density=0.5)
    partial = read_manifest(report.path)["partial_modules"]
    assert partial == {k: ["query"] for k in a if "value" in k}


def test_regmean_from_statistics_files(tmp_path):
    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2))]
    stats = [stats_file(tmp_path, "a", 10), stats_file(tmp_path, "b", 11)]
    merged = merge_adapters(paths, "regmean", [1.0, 2.0], stats=stats, alpha=0.8)
    loaded = [load_stats(p)[0] for p in stats]
    sources = [lora_deltas(p) for p in paths]
    for key, delta in merged.items():
        module = key.removesuffix(".weight")
        grams = torch.stack([s[module].xtx / s[module].count for s in loaded])
        deltas = torch.stack([s[key] for s in sources])
        expected = METHODS["regmean"](deltas, torch.tensor([1.0, 2.0]), grams=grams, alpha=0.8)
        torch.testing.assert_close(delta, expected)
    # files are matched to adapters by task: one file twice is refused, so the same Grams for
    # both tasks are passed as plain mappings (no metadata: taken in order)
    same = merge_adapters(paths, "regmean", [1.0, 2.0], stats=[loaded[0], loaded[0]])
    average = merge_adapters(paths, "weight_average", [1.0, 2.0])
    for key in same:
        torch.testing.assert_close(same[key], average[key], rtol=1e-4, atol=1e-6)


def test_random_methods_are_reproducible_per_module(three):
    a = merge_adapters(three, "dare_ties", density=0.5, seed=3)
    again = merge_adapters(three, "dare_ties", density=0.5, seed=3)
    other = merge_adapters(three, "dare_ties", density=0.5, seed=4)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not any(torch.equal(a[k], other[k]) for k in a)
    keys = sorted(a)  # each module has its own draws: not a shifted copy of its neighbour's
    assert not torch.equal(a[keys[0]] != 0, a[keys[2]] != 0)


# ---------------------------------------------------------------- bad input


def edit_config(path, **changes):
    cfg_path = path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))


def test_mismatched_bases_are_rejected(tmp_path):
    a, _ = make_adapter(tmp_path / "a", 1)
    b, _ = make_adapter(tmp_path / "b", 2)
    edit_config(a, base_model_name_or_path="org/model-1")
    edit_config(b, base_model_name_or_path="org/model-2")
    with pytest.raises(OsrmError, match="same base model"):
        merge_adapters([a, b], "task_arithmetic")
    edit_config(b, base_model_name_or_path="org/model-1")
    tensors = load_file(b / "adapter_model.safetensors")
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = torch.randn(tensors[key].shape[0], 40)
    save_file(tensors, b / "adapter_model.safetensors")
    with pytest.raises(OsrmError, match="ΔW shape") as info:
        merge_adapters([a, b], "task_arithmetic")
    assert str(b) in str(info.value)


def test_dense_output_rejects_a_different_base_model(tmp_path):
    a, _ = make_adapter(tmp_path / "a", 1)
    with pytest.raises(OsrmError, match="base model has no parameter"):
        save_merged_model(make_tiny_llama(), [a], tmp_path / "out", "task_arithmetic")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda p: (p / "adapter_model.safetensors").write_bytes(
                (p / "adapter_model.safetensors").read_bytes()[:-100]
            ),
            "not a readable safetensors",
        ),
        (lambda p: (p / "adapter_model.safetensors").unlink(), "adapter weights not found"),
        (lambda p: (p / "adapter_config.json").write_text("{"), "not valid JSON"),
        (lambda p: edit_config(p, use_dora=True), "'use_dora' is set"),
        (lambda p: edit_config(p, peft_type="IA3"), "expected 'LORA'"),
        (lambda p: edit_config(p, init_lora_weights="pissa"), "rewrites the base weights"),
        (lambda p: edit_config(p, r=7), "adapter_config (r / rank_pattern) says 7"),
        (
            lambda p: save_file(
                {
                    k: v * float("nan") if "lora_B" in k else v
                    for k, v in load_file(p / "adapter_model.safetensors").items()
                },
                p / "adapter_model.safetensors",
            ),
            "NaN or Inf",
        ),
    ],
)
def test_bad_adapters_fail_with_one_line_naming_the_file(tmp_path, corrupt, message):
    path, _ = make_adapter(tmp_path / "bad", 1)
    corrupt(path)
    with pytest.raises(OsrmError) as info:
        merge_adapters([path], "task_arithmetic")
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: merge_adapters([], "task_arithmetic"), "non-empty list"),
        (lambda p: merge_adapters([p], "linear"), "expected one of"),
        (lambda p: merge_adapters([p], "ties", densty=0.3), "valid: ['density'"),
        (lambda p: merge_adapters([p], "ties", density=0), "density must be"),
        (lambda p: merge_adapters([p], "dare_linear", density=1.2), "density must be"),
        (lambda p: merge_adapters([p], "task_arithmetic", scale=-0.5), "scale must be"),
        (lambda p: merge_adapters([p], "task_arithmetic", [1.0, 2.0]), "one per task"),
        (lambda p: merge_adapters([p], "regmean"), "needs input statistics"),
        (lambda p: merge_adapters([p], "ties", stats=["x"]), "only used by regmean"),
        (lambda p: save_merged_adapter([p], p.parent / "o", "ties", rank=0), "positive integer"),
    ],
)
def test_bad_arguments(tmp_path, call, message):
    path, _ = make_adapter(tmp_path / "a", 1)
    with pytest.raises(OsrmError) as info:
        call(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_manifest_records_effective_seed_and_statistics(tmp_path):
    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2))]
    report = save_merged_adapter(paths, tmp_path / "dare", "dare_linear", density=0.5, head=False)
    manifest = read_manifest(report.path)
    assert (
        manifest["hyperparameters"]["seed"] == 0
        and "per module" in manifest["hyperparameters"]["seeding"]
    )
    assert manifest["adapter_head"] is None
    config = json.loads((report.path / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["lora_alpha"] == config["r"]
    stats = [stats_file(tmp_path, "a", 10), stats_file(tmp_path, "b", 11)]
    out = save_merged_model(make_tiny_bert(), paths, tmp_path / "rm", "regmean", stats=stats)
    manifest = read_manifest(out)
    assert [s["sha256"] for s in manifest["stats"]] == [file_sha256(p) for p in stats]
    assert manifest["hyperparameters"] == {"alpha": 0.9, "scale": 1.0, "gram": "mean"}
    with pytest.raises(OsrmError, match="tasks with a head"):
        save_merged_adapter(paths, tmp_path / "x", "task_arithmetic", head="nope")
    with pytest.raises(OsrmError, match="no head saved"):
        load_head(make_tiny_bert(), out, "nope")
