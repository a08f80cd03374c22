"""The merge methods' registry, ``METHODS``: the one place a method's traits are stated.

A method registers where it is written, with ``@register(name, **checks, **traits)`` on its
function (``fn(deltas (k, d_out, d_in), weights (k,), **hp) -> ΔW``). Its hyperparameters are
the function's keyword-only parameters that have a default (read once, when it registers),
checked by the :data:`CHECKS` of their name unless the method names its own; the traits callers
act on are ``coeffs`` (linear), ``random`` (adds the ``seed`` hyperparameter; the body receives
a ``generator``) and ``needs_stats`` (the body receives ``grams``). Every call goes through
:meth:`Method.__call__`, so a library call, the merge and the config grid
(:func:`validate_hyperparameters`) run the same checks with the same messages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.checks import (
    SIGN_METHODS,
    check_choice,
    check_flag,
    check_fraction,
    check_scale,
    check_seed,
    check_weights,
    make_generator,
    prepare,
)

Check = Callable[[str, Any], object]  # check(name, value): OsrmError if invalid
# the checks of the hyperparameter names methods share (a method may pass its own instead)
CHECKS: dict[str, Check] = {
    "scale": check_scale,
    "density": check_fraction,
    "majority_sign": partial(check_choice, valid=SIGN_METHODS),
    "normalize": check_flag,
    "seed": check_seed,
}


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its default (the function's) and its check."""

    default: Any
    check: Check


@dataclass(frozen=True)
class Method:
    """A merge method and everything callers need to know about it."""

    fn: Callable[..., Tensor]
    hyperparameters: dict[str, Hyper]  # in the function's keyword order (filled by register)
    # linear: ΔW = Σ c_i Δ_i with c = coeffs(weights, hp), so a merged LoRA adapter is an exact
    # concatenation of the factors (no SVD)
    coeffs: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None
    random: bool = False  # draws entries: the merge gives it one seeded generator per module
    needs_stats: bool = False  # reads input Gram matrices (``grams``) from statistics files
    check: Callable[[Mapping[str, Any], Tensor], None] | None = None  # joint hp / weights rules

    @property
    def linear(self) -> bool:
        return self.coeffs is not None

    @property
    def inputs(self) -> tuple[str, ...]:
        """Keywords the merge supplies per module, never a config: generator, Gram matrices."""
        return ("generator",) * self.random + ("grams",) * self.needs_stats

    def check_values(self, hp: Mapping[str, Any], weights: Tensor) -> None:
        """Each given value through its :class:`Hyper` check (in keyword order), then the joint
        rule on every value (defaults filled in) and the weights."""
        for key, hyper in self.hyperparameters.items():
            if key in hp:
                hyper.check(key, hp[key])
        if self.check is not None:
            defaults = {key: h.default for key, h in self.hyperparameters.items()}
            self.check({**defaults, **hp}, weights)

    def __call__(self, deltas: Tensor, weights: Tensor, **kwargs: Any) -> Tensor:
        """Check the inputs, merge in float32 (float64 stays), return ΔW in the deltas' dtype."""
        x, w = prepare(deltas, weights, kwargs.get("scale", 1.0))
        self.check_values(kwargs, w)
        if self.random:  # the body draws from one generator: the given one, else seeded
            seed, generator = kwargs.pop("seed", None), kwargs.pop("generator", None)
            kwargs["generator"] = make_generator(seed, generator)
        return self.fn(x, w, **kwargs).to(deltas.dtype)


# name -> method, in registration order; keys follow the literature (and peft/mergekit where
# they agree). Filled by ``@register`` in methods.py and structured.py (imported by the package).
METHODS: dict[str, Method] = {}


def register(
    name: str,
    *,
    coeffs: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None,
    random: bool = False,
    needs_stats: bool = False,
    check: Callable[[Mapping[str, Any], Tensor], None] | None = None,
    **checks: Check,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: record ``fn`` as method ``name``; return it wrapped in :meth:`Method.__call__`.

    ``checks`` gives the check of each hyperparameter not in :data:`CHECKS` (or overrides one).
    """

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        method = METHODS[name] = Method(fn, {}, coeffs, random, needs_stats, check)
        # keyword-only parameters with a default, in keyword order; a random method's seed last
        declared = {**(fn.__kwdefaults__ or {}), **({"seed": None} if random else {})}
        for key, default in declared.items():
            check_of = checks.get(key) or CHECKS[key]  # KeyError: a check is missing
            method.hyperparameters[key] = Hyper(default, check_of)

        @functools.wraps(fn)
        def checked(deltas: Tensor, weights: Tensor, **kwargs: Any) -> Tensor:
            return method(deltas, weights, **kwargs)

        return checked

    return add


def get_method(name: str) -> Method:
    """The method registered under ``name``, or :class:`OsrmError` listing the valid names."""
    if name not in METHODS:
        raise OsrmError(f"merge method {name!r} is unknown; expected one of {sorted(METHODS)}")
    return METHODS[name]


def methods_with(trait: str) -> str:
    """The names of the methods with ``trait`` (e.g. ``"needs_stats"``), for messages."""
    return " or ".join(name for name, m in METHODS.items() if getattr(m, trait))


def hyperparameters(name: str) -> dict[str, Any]:
    """Hyperparameter name -> default of a method."""
    return {key: h.default for key, h in get_method(name).hyperparameters.items()}


def check_hyperparameters(name: str, hp: Mapping[str, Any]) -> None:
    """Raise :class:`OsrmError` listing the valid names if ``hp`` has an unknown key.

    The per-module inputs (``generator``, ``grams``) are accepted here: library callers may
    pass a generator, and the merge rejects a ``grams`` keyword with a message of its own.
    """
    method = get_method(name)
    valid = [*method.hyperparameters, *method.inputs]
    unknown = sorted(set(hp) - set(valid))
    if unknown:
        raise OsrmError(
            f"merge method {name!r} has no hyperparameter {unknown[0]!r}; valid: {sorted(valid)}"
        )


def validate_hyperparameters(
    name: str, hp: Mapping[str, Any], weights: Sequence[float] | Tensor | None = None
) -> None:
    """Check a method's hyperparameter names *and values* (and task weights) before any work."""
    method = get_method(name)
    check_hyperparameters(name, hp)
    if set(hp) & set(method.inputs):
        raise OsrmError(f"merge method {name!r}: grams and generator are not hyperparameters")
    w = torch.ones(2) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    method.check_values(hp, check_weights(w, max(int(w.numel()), 1)))
