"""Keeping A where OSRM put it: a subspace constraint on ``lora_A`` and an interference penalty.

Both act during training only; the saved adapter is an ordinary peft LoRA adapter.

- :func:`constrain_a` (``lora.a_subspace: k``): ``A = R·U_kᵀ`` with ``R`` (r, k) trainable and
  ``U_k`` (d_in, k) fixed orthonormal columns whose first r are the OSRM init, so ``A`` starts at
  the init and never leaves ``span(U_k)``. A torch parametrization on each ``lora_A`` weight;
  :func:`osrm.adapters.save_adapter` writes ``R·U_kᵀ`` as a plain ``lora_A`` weight.
- :func:`interference_penalty` (``train.interference_penalty: μ``): the closed-form ratio of the
  adapter's output energy on other tasks' inputs to that on its own inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from osrm.adapters import lora_layers
from osrm.errors import OsrmError
from osrm.linalg import StatsByTask, moment, other_moment

# keeps the ratio defined (and 0, with zero gradient) at B = 0, where both energies are 0
PENALTY_EPS = 1e-12


class InSpan(nn.Module):
    """Parametrization ``R (r, k) -> R @ basis (r, d_in)``: rows stay in the span of ``basis``."""

    def __init__(self, basis: Tensor) -> None:
        super().__init__()
        self.register_buffer("basis", basis)  # (k, d_in), orthonormal rows

    def forward(self, coeffs: Tensor) -> Tensor:
        return coeffs @ self.basis


def constrain_a(peft_model: nn.Module, directions: Mapping[str, Tensor]) -> None:
    """Constrain every ``lora_A`` (r, d_in) to ``R @ directions[module]`` (in place).

    ``directions[module]`` is (k, d_in) with orthonormal rows whose first r rows are the current
    ``A`` (see :func:`osrm.subspace.osrm_directions`); ``R`` starts at ``[I_r | 0]``, so ``A``
    starts exactly where it is. k >= d_in leaves that ``A`` free (the span is everything).
    """
    layers = lora_layers(peft_model)
    missing = sorted(set(layers) - set(directions))
    if missing:
        raise OsrmError(f"subspace directions missing for modules {missing[:3]}")
    for name, layer in layers.items():
        linear = layer.lora_A["default"]
        r, d_in = linear.weight.shape
        basis = directions[name].to(device=linear.weight.device, dtype=linear.weight.dtype)
        k = basis.shape[0]
        if k >= d_in:
            continue
        if k < r or basis.shape[1] != d_in or not torch.equal(basis[:r], linear.weight.detach()):
            raise OsrmError(
                f"directions for {name} have shape {tuple(basis.shape)}: expected (k >= {r}, "
                f"{d_in}) whose first {r} rows are lora_A"
            )
        requires_grad = linear.weight.requires_grad
        linear.weight = nn.Parameter(  # R; peft's forward reads .weight, now R @ basis
            torch.eye(r, k, dtype=basis.dtype, device=basis.device), requires_grad=requires_grad
        )
        parametrize.register_parametrization(linear, "weight", InSpan(basis), unsafe=True)


def penalty_moments(
    stats_by_task: StatsByTask, task: str, weighting: str = "equal"
) -> dict[str, tuple[Tensor, Tensor]]:
    """module -> (``C_own``, ``C_other``), each (d_in, d_in) float64 per-token second moments.

    ``C_other`` pools the other tasks as the subspace's ``C_{-i}`` does (``weighting``).
    """
    return {
        module: (
            moment([stats_by_task[task][module]]),
            other_moment(stats_by_task, task, module, weighting),
        )
        for module in sorted(stats_by_task[task])
    }


def interference_penalty(
    peft_model: nn.Module, moments: Mapping[str, tuple[Tensor, Tensor]], weight: float = 1.0
) -> Callable[[], Tensor]:
    """A function returning ``weight`` (μ) times the mean over LoRA modules of
    ``E_other‖BAx‖² / E_own‖BAx‖²``, with ``moments`` from :func:`penalty_moments`.

    ``E‖BAx‖² = tr(B A C Aᵀ Bᵀ)`` for inputs with second moment ``C``, so both energies come in
    closed form from the statistics ((r, r) Gram ``A C Aᵀ``: ``r·d²`` flops per module and step),
    no extra forward pass. Why this form: merging adds ``ΔW = s·BA`` to the weights every other
    task sees, and ``E_other‖ΔW x‖²`` is the perturbation it causes there; dividing by the same
    update's energy on its own inputs makes the ratio blind to the update's size (and to ``s``),
    so it does not act as weight decay against the task loss, only steers *which* inputs ``BA``
    responds to. It is 0 when ``A``'s rows are orthogonal to the other tasks' inputs, and at
    ``B = 0`` (``PENALTY_EPS``) with zero gradient. Being scale-free, its gradient grows like
    ``1/‖BA‖`` while ``B`` is small. The mean (not sum) keeps μ's scale independent of the number
    of modules. Computed in float32 outside autocast.
    """
    layers = lora_layers(peft_model)
    missing = sorted(set(layers) - set(moments))
    if missing:
        raise OsrmError(f"statistics missing for LoRA modules {missing[:3]}")
    device = next(peft_model.parameters()).device
    mats = {  # one copy per distinct statistics (q and v of a layer share theirs)
        id(c): c.to(device=device, dtype=torch.float32) for pair in moments.values() for c in pair
    }
    pairs = [(layers[n], mats[id(moments[n][0])], mats[id(moments[n][1])]) for n in layers]

    def penalty() -> Tensor:
        with torch.autocast(device.type, enabled=False):
            ratios = [
                module_ratio(layer.lora_A["default"].weight, layer.lora_B["default"].weight, co, cx)
                for layer, co, cx in pairs
            ]
        return weight * torch.stack(ratios).mean()

    return penalty


def module_ratio(a: Tensor, b: Tensor, c_own: Tensor, c_other: Tensor) -> Tensor:
    """``tr(B A C_other Aᵀ Bᵀ) / (tr(B A C_own Aᵀ Bᵀ) + ε)`` in the moments' dtype;
    a (r, d), b (d_out, r), c (d, d)."""
    a, b = a.to(c_own.dtype), b.to(c_own.dtype)
    gram_b = b.T @ b  # (r, r): tr(B G Bᵀ) = ⟨G, BᵀB⟩

    def energy(c: Tensor) -> Tensor:
        return ((a @ c @ a.T) * gram_b).sum()

    return energy(c_other) / (energy(c_own) + PENALTY_EPS)
