"""Merge weights from statistics (``weights: auto``): no validation sweep, no labels.

The task weights λ minimise the merged update's error on every task's inputs,

    Σ_t E_{x~t} ‖Σ_j λ_j ΔW_j x − ΔW_t x‖²     (summed over modules, or per module),

a least-squares problem in λ: with C_t the per-token second moment of task t's inputs,
``G_jl = Σ_t tr(ΔW_j C_t ΔW_lᵀ)`` and ``b_j = Σ_t tr(ΔW_j C_t ΔW_tᵀ)``, λ solves
``(G + ρI) λ = b + ρ u`` with u = 1/k (a ridge toward uniform weights; ρ relative to tr(G)/k).
Adapters that act on mutually orthogonal inputs get λ = 1 (each keeps its own output, nothing
leaks); k identical adapters get 1/k (their sum would count the update k times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import get_args

import torch
from torch import Tensor

from osrm.config import WeightMode
from osrm.errors import OsrmError

RIDGE = 1e-4  # ρ = RIDGE · tr(G) / k: keeps λ defined when adapters are (nearly) collinear
AUTO_MODES: tuple[str, ...] = get_args(WeightMode)  # ("auto", "auto-per-module")


def normal_equations(deltas: Tensor, grams: Tensor) -> tuple[Tensor, Tensor]:
    """G (k, k) and b (k,) of one module, float64; deltas (k, d_out, d_in), grams (k, d_in, d_in).

    ``tr(ΔW_j C_t ΔW_lᵀ)`` for all j, l at once per t: (ΔW C_t) is one batched product.
    """
    deltas = deltas.double()
    k = deltas.shape[0]
    g = torch.zeros(k, k, dtype=torch.float64)
    b = torch.zeros(k, dtype=torch.float64)
    for t in range(grams.shape[0]):
        weighted = deltas @ grams[t].double()  # (k, d_out, d_in): ΔW_j C_t
        g += torch.einsum("jod,lod->jl", weighted, deltas)
        b += torch.einsum("jod,od->j", weighted, deltas[t])
    return g, b


Factors = Sequence[tuple[Tensor, Tensor] | None]  # per task: (s·B (d_out, r), A (r, d_in)) or None


def normal_equations_lora(factors: Factors, grams: Tensor) -> tuple[Tensor, Tensor]:
    """G and b of one module from LoRA factors (None: the task has no update there), exactly
    as :func:`normal_equations` on ΔW_j = s·B_j·A_j but without forming any ΔW:
    ``tr(B_j A_j C_t A_lᵀ B_lᵀ) = ⟨B_jᵀ B_l, A_j C_t A_lᵀ⟩`` on (Σr × Σr) blocks."""
    k = len(factors)
    present = [(j, f) for j, f in enumerate(factors) if f is not None]
    b_cat = torch.cat([f[0].double() for _, f in present], 1)  # (d_out, R)
    a_cat = torch.cat([f[1].double() for _, f in present], 0)  # (R, d_in)
    owner = torch.cat([torch.full((f[1].shape[0],), j) for j, f in present])  # (R,) task of row
    one_hot = torch.nn.functional.one_hot(owner, k).double()  # (R, k)
    gram_b = b_cat.T @ b_cat  # (R, R)
    g = torch.zeros(k, k, dtype=torch.float64)
    b = torch.zeros(k, dtype=torch.float64)
    for t in range(grams.shape[0]):
        blocks = one_hot.T @ (gram_b * (a_cat @ grams[t].double() @ a_cat.T)) @ one_hot  # (k, k)
        g += blocks
        b += blocks[:, t]
    return g, b


def solve_weights(g: Tensor, b: Tensor, ridge: float = RIDGE) -> Tensor:
    """λ (k,) = (G + ρI)⁻¹ (b + ρ/k); ρ = ridge · tr(G)/k. A zero G (all updates silent on
    every input) gives uniform 1/k."""
    k = g.shape[0]
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float64)
    scale = float(torch.trace(g)) / k
    if scale <= 0:
        return uniform
    rho = ridge * scale
    if rho == 0:  # plain least squares; the minimum-norm solution if G is singular
        return torch.linalg.lstsq(g, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return torch.linalg.solve(g + rho * torch.eye(k, dtype=torch.float64), b + rho * uniform)


def auto_weights(
    modules: Iterable[tuple[str, Tensor | Factors]],
    grams: Callable[[str], Tensor | None],
    per_module: bool = False,
    ridge: float = RIDGE,
) -> dict[str, Tensor]:
    """Module name -> λ (k,) float64 from ``(name, deltas (k, d_out, d_in))`` pairs (or
    ``(name, per-task LoRA factors)``, see :func:`normal_equations_lora`) and
    ``grams(name)`` -> (k, d_in, d_in) per-token second moments (one per task, in the deltas'
    order). One λ for all modules (from the sum of their systems) unless ``per_module``; a
    module without statistics (``grams`` gives None, e.g. a LayerNorm of a full fine-tune) takes
    the shared λ.

    Raises:
        OsrmError: no module has statistics, or a non-finite solution.
    """
    systems, names = {}, []
    for name, update in modules:
        names.append(name)
        moments = grams(name)
        if moments is None:
            continue
        dense = isinstance(update, Tensor)
        systems[name] = (normal_equations if dense else normal_equations_lora)(update, moments)
    if not systems:
        raise OsrmError("weights auto: no module has input statistics")
    g = sum(g for g, _ in systems.values())
    b = sum(b for _, b in systems.values())
    shared = solve_weights(g, b, ridge)
    out = {n: solve_weights(*systems[n], ridge) if per_module and n in systems else shared
           for n in names}  # fmt: skip
    for name, lam in out.items():
        if not torch.isfinite(lam).all():
            raise OsrmError(f"weights auto: no finite solution at module {name!r}")
    return out
