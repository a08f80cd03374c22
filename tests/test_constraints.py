"""Keeping A where OSRM put it: lora.a_subspace (A = R·U_kᵀ) and train.interference_penalty."""

from __future__ import annotations

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from conftest import make_tiny_bert, synthetic_batches
from osrm.adapters import attach_lora, lora_layers, save_adapter
from osrm.cli import main
from osrm.config import TrainSection, parse_config
from osrm.constraints import (
    PENALTY_EPS,
    constrain_a,
    interference_penalty,
    module_ratio,
    penalty_moments,
)
from osrm.errors import OsrmError
from osrm.stats import LayerStats, collect_stats, load_stats
from osrm.subspace import osrm_bases, osrm_directions
from osrm.train import train
from tiny_workspace import make_workspace

TARGETS = ["query", "value"]
STEPS = TrainSection(steps=8, lr=3e-2, batch_size=8, checkpoint_every=0, warmup_ratio=0.0)


def labelled(epoch: int) -> list[dict[str, torch.Tensor]]:
    out = synthetic_batches(100 + epoch, 32, 8)
    for b in out:
        b["labels"] = (b["input_ids"][:, 1] >= 32).long()
    return out


def two_task_stats(model):
    return {
        t: collect_stats(model, synthetic_batches(s, 8, 4, lo=lo, hi=hi), TARGETS, progress=False)
        for t, s, lo, hi in (("low", 0, 1, 32), ("high", 1, 32, 64))
    }


def peft_model(bases=None):
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="SEQ_CLS")
    return attach_lora(make_tiny_bert(num_labels=2), cfg, bases=bases)


def sin_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sines of the principal angles between the row spaces of a and b (float64, accurate at 0)."""
    qa, _ = torch.linalg.qr(a.double().T)
    qb, _ = torch.linalg.qr(b.double().T)
    return torch.linalg.svdvals(qa - qb @ (qb.T @ qa))


@pytest.fixture(scope="module")
def stats_and_bases():
    stats = two_task_stats(make_tiny_bert())
    return stats, osrm_bases(stats, "low", 4)


def test_directions_start_with_the_init_and_extend_the_same_eigenproblem(stats_and_bases):
    stats, bases = stats_and_bases
    wide = osrm_bases(stats, "low", 10)  # the 10 smallest eigenvectors of C_{-i}
    for mode in ("cov", "contrast", "mean"):
        init = bases if mode == "cov" else osrm_bases(stats, "low", 4, mode)
        dirs = osrm_directions(stats, "low", init, 10, mode)
        for name, u in dirs.items():
            assert u.shape == (10, 32) and torch.equal(u[:4], init[name])
            torch.testing.assert_close(u @ u.T, torch.eye(10, dtype=u.dtype), atol=1e-12, rtol=0)
            if mode == "cov":  # the next directions: same span as the rank-10 solution
                assert sin_angles(u, wide[name]).max() < 1e-10
    again = osrm_bases(stats, "low", 4)  # the rank-r solution is unchanged
    assert all(torch.equal(again[name], b) for name, b in bases.items())


def test_a_subspace_rank_keeps_the_row_space_while_a_trains(stats_and_bases):
    stats, bases = stats_and_bases
    model = peft_model(bases)
    constrain_a(model, osrm_directions(stats, "low", bases, 4))
    for name, layer in lora_layers(model).items():  # A starts exactly at the OSRM init
        assert torch.equal(layer.lora_A["default"].weight, bases[name].float())
    train(model, labelled, STEPS, progress=False)
    for name, layer in lora_layers(model).items():
        a = layer.lora_A["default"].weight.detach()
        assert (a - bases[name].float()).abs().max() > 1e-3, name  # R trained: A moved
        assert sin_angles(a, bases[name]).max() < 1e-5, name  # ... inside its initial span
        r = layer.lora_A["default"].parametrizations.weight.original
        assert r.shape == (4, 4) and r.requires_grad


def test_a_subspace_k_keeps_a_in_the_k_directions(stats_and_bases):
    stats, bases = stats_and_bases
    dirs = osrm_directions(stats, "low", bases, 8)
    model = peft_model(bases)
    constrain_a(model, dirs)
    train(model, labelled, STEPS, progress=False)
    for name, layer in lora_layers(model).items():
        a = layer.lora_A["default"].weight.detach().double()
        assert sin_angles(a, bases[name]).max() > 1e-2  # it left the init's span
        inside = a @ dirs[name].T @ dirs[name]
        assert (a - inside).abs().max() < 1e-6  # ... but not the 8 directions


def test_a_subspace_at_d_in_is_todays_training(stats_and_bases):
    stats, bases = stats_and_bases
    free, full = peft_model(bases), peft_model(bases)
    eye = {name: torch.cat([b, torch.zeros(28, 32, dtype=b.dtype)]) for name, b in bases.items()}
    constrain_a(full, eye)  # k = d_in: no constraint at all (whatever the rows)
    train(free, labelled, STEPS, progress=False)
    train(full, labelled, STEPS, progress=False)
    assert free.state_dict().keys() == full.state_dict().keys()
    for (name, a), b in zip(free.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_constrained_adapter_saves_as_plain_peft(stats_and_bases, tmp_path):
    stats, bases = stats_and_bases
    base = make_tiny_bert(num_labels=2)
    base.save_pretrained(tmp_path / "base")
    plain = peft_model(bases)
    save_adapter(plain, tmp_path / "plain")
    model = peft_model(bases)
    constrain_a(model, osrm_directions(stats, "low", bases, 6))
    train(model, labelled, STEPS, progress=False)
    save_adapter(model, tmp_path / "constrained")
    assert (
        lora_layers(model)["bert.encoder.layer.0.attention.self.query"]
        .lora_A["default"]
        .parametrizations
    )  # saving leaves the constraint on (budgets save mid-run)
    saved = load_file(tmp_path / "constrained" / "adapter_model.safetensors")
    reference = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.items()}
    reloaded = PeftModel.from_pretrained(
        type(base).from_pretrained(tmp_path / "base"), tmp_path / "constrained"
    ).eval()
    model.eval()
    batches = synthetic_batches(9, 12, 4)
    with torch.no_grad():
        for b in batches:
            torch.testing.assert_close(reloaded(**b).logits, model(**b).logits, rtol=0, atol=1e-6)


def test_penalty_closed_form_on_hand_made_moments():
    g = torch.Generator().manual_seed(0)
    d, r = 6, 2
    a = torch.eye(d)[:r]  # A's rows: e1, e2
    b = torch.randn(3, r, generator=g, dtype=torch.float64)
    x_own = torch.randn(50, d, generator=g, dtype=torch.float64)
    x_other = torch.randn(40, d, generator=g, dtype=torch.float64)
    x_other[:, :r] = 0  # the other tasks' inputs live in e3..e6, orthogonal to A's rows
    c_own, c_other = x_own.T @ x_own / 50, x_other.T @ x_other / 40
    assert module_ratio(a, b, c_own, c_other).item() == 0.0
    # rotate A towards the other tasks' inputs: positive, and E‖BAx‖² = mean over the rows x
    a = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].T
    direct = ((x_other @ a.T @ b.T) ** 2).sum(1).mean() / (
        ((x_own @ a.T @ b.T) ** 2).sum(1).mean() + PENALTY_EPS
    )
    ratio = module_ratio(a, b, c_own.float(), c_other.float())
    assert direct > 0.1
    torch.testing.assert_close(ratio.double(), direct, rtol=1e-5, atol=0)
    # scale-free in BA; 0 with zero gradient at B = 0
    torch.testing.assert_close(module_ratio(3 * a, 5 * b, c_own, c_other).double(), direct)
    zero = torch.zeros(3, r, dtype=torch.float64, requires_grad=True)
    value = module_ratio(a, zero, c_own, c_other)
    value.backward()
    assert value.item() == 0.0 and not zero.grad.any()


def test_penalty_on_a_model_mean_of_modules_gradients_reach_a_and_b():
    model = peft_model()
    layers = lora_layers(model)
    g = torch.Generator().manual_seed(1)
    half = torch.zeros(32, 32, dtype=torch.float64)
    half[16:, 16:] = torch.eye(16, dtype=torch.float64)  # other tasks: the last 16 coordinates
    own = torch.eye(32, dtype=torch.float64)
    moments = {name: (own, half) for name in layers}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_A["default"].weight.zero_()[:, :4] = torch.eye(4)  # rows e1..e4
            layer.lora_B["default"].weight.normal_(generator=g)
    penalty = interference_penalty(model, moments, weight=2.0)
    assert penalty().item() == 0.0  # A orthogonal to the other tasks' inputs
    c = torch.tensor([1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():  # rows e_i + c_i e_{16+i}: energy c_i² on other inputs, 1 + c_i² own
        for layer in layers.values():
            layer.lora_A["default"].weight[:, 16:20] = torch.diag(c)
    expected = []  # tr(B diag(c²) Bᵀ) / tr(B diag(1 + c²) Bᵀ), per module
    for layer in layers.values():
        cols = (layer.lora_B["default"].weight.detach() ** 2).sum(0)
        expected.append((cols * c**2).sum() / (cols * (1 + c**2)).sum())
    value = penalty()
    torch.testing.assert_close(value, 2.0 * torch.stack(expected).mean())
    value.backward()
    for layer in layers.values():  # B here has full column rank, so both gradients are non-zero
        assert layer.lora_A["default"].weight.grad.abs().max() > 0
        assert layer.lora_B["default"].weight.grad.abs().max() > 0


def test_penalty_moments_pool_the_other_tasks_as_the_subspace_does():
    def stats(scale: float, count: int) -> dict[str, LayerStats]:
        return {"m": LayerStats(scale * torch.eye(2, dtype=torch.float64), torch.zeros(2), count)}

    by_task = {"a": stats(10.0, 10), "b": stats(4.0, 2), "c": stats(30.0, 10)}
    own, other = penalty_moments(by_task, "a")["m"]
    torch.testing.assert_close(own, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(other, 2.5 * torch.eye(2, dtype=torch.float64))  # (2 + 3) / 2
    _, pooled = penalty_moments(by_task, "a", "tokens")["m"]
    torch.testing.assert_close(pooled, 34 / 12 * torch.eye(2, dtype=torch.float64))


def test_config_rejects_a_subspace_below_rank_and_a_negative_penalty():
    with pytest.raises(OsrmError, match=r"^config: field 'lora.a_subspace': expected null or an"):
        parse_config({"tasks": ["a", "b"], "lora": {"rank": 8, "a_subspace": 4}})
    with pytest.raises(OsrmError, match=r"^config: field 'train.interference_penalty'.* 0 \(got"):
        parse_config({"tasks": ["a", "b"], "train": {"interference_penalty": -0.1}})
    cfg = parse_config({"tasks": ["a", "b"]})  # off by default, and absent from the dumps
    assert cfg.lora.a_subspace is None and cfg.train.interference_penalty == 0
    assert "a_subspace" not in cfg.lora.model_dump()
    assert "interference_penalty" not in cfg.train.model_dump()


def test_train_command_with_both_options(tmp_path):
    """osrm train: with k = r and a penalty the saved A spans the OSRM init; k = d_in gives
    byte-identical adapters to no option."""
    weights = {}
    for name, lora, train_cfg in (
        ("free", {}, {}),
        ("d_in", {"a_subspace": 32}, {}),
        ("kept", {"a_subspace": 4}, {"interference_penalty": 0.5}),
    ):
        config = make_workspace(tmp_path / name, inits=("osrm",), n_tasks=2)
        cfg = yaml.safe_load(config.read_text())
        cfg["lora"].update(lora)
        cfg["train"].update(train_cfg)
        config.write_text(yaml.safe_dump(cfg))
        assert main(["train", str(config)]) == 0
        adapter = tmp_path / name / "run" / "adapters" / "osrm" / "low"
        weights[name] = (adapter / "adapter_model.safetensors").read_bytes()
    assert weights["d_in"] == weights["free"]
    run = tmp_path / "kept" / "run"
    stats = {t: load_stats(run / "stats" / f"{t}.safetensors")[0] for t in ("low", "high")}
    bases = osrm_bases(stats, "low", 4)
    saved = load_file(run / "adapters" / "osrm" / "low" / "adapter_model.safetensors")
    free = load_file(tmp_path / "free" / "run" / "adapters/osrm/low/adapter_model.safetensors")
    for key, a in saved.items():
        if "lora_A" in key:
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            assert sin_angles(a, bases[module]).max() < 1e-5, key
            assert sin_angles(free[key], bases[module]).max() > 1e-3, key


def test_constrained_penalised_training_resumes_exactly(stats_and_bases, tmp_path):
    stats, bases = stats_and_bases
    cfg = STEPS.model_copy(update={"steps": 10, "checkpoint_every": 3})

    def run(ckpt=None, on_step=None):
        model = peft_model(bases)
        constrain_a(model, osrm_directions(stats, "low", bases, 6))
        penalty = interference_penalty(model, penalty_moments(stats, "low"), weight=0.5)
        result = train(model, labelled, cfg, checkpoint_dir=ckpt, on_step=on_step,
                       progress=False, penalty=penalty)  # fmt: skip
        return model, result

    def interrupt(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    straight, ref = run()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, interrupt)
    resumed, result = run(tmp_path)
    assert result.resumed_from == 6 and result.losses == ref.losses
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_penalty_lowers_the_interference_ratio_of_training(stats_and_bases):
    stats, bases = stats_and_bases
    moments = penalty_moments(stats, "low")
    ratios = []
    for mu in (0.0, 0.1):
        model = peft_model(bases)
        penalty = interference_penalty(model, moments, weight=mu) if mu else None
        train(model, labelled, STEPS, progress=False, penalty=penalty)
        ratios.append(interference_penalty(model, moments)().item())
    assert ratios[1] < 0.25 * ratios[0], ratios  # about 0.42 -> 0.04 here
