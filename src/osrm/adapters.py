"""OSRM adapters on peft: an ordinary LoRA whose ``lora_A`` starts in the OSRM subspace.

No new peft type: the initialisation lives in the weights, so a saved adapter loads with plain
``PeftModel.from_pretrained``. ``lora_B`` starts at zero, so at step 0 the model equals the base.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from osrm import __version__
from osrm.artifacts import MANIFEST_FILE, atomic_dir, seal_dir, verify_dir
from osrm.config import ExperimentConfig
from osrm.errors import OsrmError, one_line
from osrm.guards import check_finite
from osrm.loaders import read_json
from osrm.safety import ADAPTER_WEIGHTS, PROVENANCE_FILE, require_safetensors

RECORD_FILE = "training.json"
# what a finished adapter directory of a run must hold (and its manifest must vouch for)
RUN_ADAPTER_FILES = (ADAPTER_WEIGHTS, "adapter_config.json", RECORD_FILE)
# peft inits that leave the base weights alone and only draw A/B; others (pissa, olora, eva,
# corda, loftq) rewrite the base or need their own data, which an OSRM basis would contradict.
_PLAIN_INITS = (True, False, "gaussian")


@dataclass(frozen=True)
class Provenance:
    """How an adapter's ``A`` was initialised; saved as ``osrm_provenance.json`` beside it."""

    task: str
    init: str  # a name of inits.INITS
    rank: int
    mode: str | None = None  # a name of inits.MODES (None: peft's default init)
    options: dict = field(default_factory=dict)
    stats_digests: dict = field(default_factory=dict)  # task -> statistics content hash
    base_fingerprint: str | None = None  # hash of all target modules' base weights together
    # target module -> hash of its base weights (osrm.stats.module_fingerprints): adapters with
    # different target modules are compared on the modules they share
    base_fingerprints: dict = field(default_factory=dict, repr=False)  # not in run fingerprints
    freeze_a: bool = False
    # generative tasks: {"template", "verbalisers", "labels"}, what a merged model needs to
    # answer the task (the run directory pins the tasks, so it is not in run fingerprints)
    prompt: dict = field(default_factory=dict, repr=False)
    osrm_version: str = __version__


def lora_layers(peft_model: PeftModel) -> dict[str, LoraLayer]:
    """Base-model module name -> peft LoRA layer of the (only, ``default``) adapter."""
    return {
        name: module
        for name, module in peft_model.base_model.model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.lora_A
    }


def attach_lora(
    model: nn.Module,
    lora_config: LoraConfig,
    bases: Mapping[str, Tensor] | None = None,
    freeze_a: bool = False,
) -> PeftModel:
    """Wrap ``model`` in a peft LoRA (in place); with ``bases``, start each ``lora_A`` at its
    OSRM basis and zero ``lora_B``, so the outputs equal the base model's.

    ``bases`` maps every target module name to its (r, d_in) basis with orthonormal rows;
    ``freeze_a`` stops gradients into every ``lora_A`` (A keeps its initial subspace exactly).
    The trainable parameters are the LoRA factors and ``modules_to_save``.
    """
    if bases is not None and lora_config.init_lora_weights not in _PLAIN_INITS:
        raise OsrmError(
            f"lora.init_lora_weights {lora_config.init_lora_weights!r} cannot take OSRM bases; "
            f"expected one of {list(_PLAIN_INITS)}"
        )
    peft_model = get_peft_model(model, lora_config)
    layers = lora_layers(peft_model)
    if bases is not None:
        _write_bases(layers, bases)
    if freeze_a:
        for layer in layers.values():
            layer.lora_A["default"].weight.requires_grad_(False)
    return peft_model


def _write_bases(layers: Mapping[str, LoraLayer], bases: Mapping[str, Tensor]) -> None:
    missing, extra = sorted(set(layers) - set(bases)), sorted(set(bases) - set(layers))
    if missing or extra:
        raise OsrmError(
            "bases do not match the LoRA target modules: "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, layer in layers.items():
            weight_a = layer.lora_A["default"].weight  # (r, d_in)
            if tuple(bases[name].shape) != tuple(weight_a.shape):
                raise OsrmError(
                    f"basis for {name} has shape {tuple(bases[name].shape)}, "
                    f"expected (r, d_in) = {tuple(weight_a.shape)}"
                )
            weight_a.copy_(bases[name].to(weight_a.dtype))
            layer.lora_B["default"].weight.zero_()


def save_adapter(
    peft_model: PeftModel,
    out_dir: str | Path,
    provenance: Provenance | None = None,
    record: Mapping | None = None,
) -> Path:
    """``save_pretrained`` into ``out_dir`` atomically, with the OSRM provenance beside it.

    ``record`` (e.g. the training history) is written as ``training.json`` in the same step,
    and ``osrm_manifest.json`` lists every file's sha256, so an adapter directory is either
    complete and verifiable or absent.
    """
    out_dir = Path(out_dir)
    trained = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    check_finite(trained, f"trained adapter ({out_dir})")  # a diverged run is never saved
    with atomic_dir(out_dir) as tmp:
        plain = plain_state_dict(peft_model)  # a constrained A (lora.a_subspace) as R·U_kᵀ
        extra = {} if plain is None else {"state_dict": plain}
        peft_model.save_pretrained(str(tmp), safe_serialization=True, **extra)
        _sort_set_fields(tmp / "adapter_config.json", peft_model)
        if provenance is not None:
            (tmp / PROVENANCE_FILE).write_text(json.dumps(asdict(provenance), indent=2) + "\n")
        if record is not None:
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        seal_dir(tmp)
    return out_dir


def plain_state_dict(peft_model: nn.Module) -> dict[str, Tensor] | None:
    """``peft_model``'s state dict with every parametrized weight (``osrm.constraints``) in
    peft's own key and shape, its current value; None when no weight is parametrized.

    The model is left as it is, so saving mid-training (budgets) keeps the constraint on.
    """
    state = peft_model.state_dict()
    owners = {k.split(".parametrizations.")[0] for k in state if ".parametrizations." in k}
    if not owners:
        return None
    for owner in sorted(owners):
        for key in [k for k in state if k.startswith(f"{owner}.parametrizations.")]:
            del state[key]
        with torch.no_grad():
            state[f"{owner}.weight"] = peft_model.get_submodule(owner).weight.detach()
    return state


def _sort_set_fields(path: Path, peft_model: PeftModel) -> None:
    """peft writes set-valued fields (``target_modules``) in set order, which changes from one
    process to the next (string hashing is salted); sorted, equal adapters give equal files."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    sets = {
        k for c in peft_model.peft_config.values() for k, v in vars(c).items() if isinstance(v, set)
    }
    for key in sets:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key], key=str)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))  # peft's own layout


def finished_adapter(adapter_dir: str | Path, fingerprint: str) -> bool:
    """Whether a run's adapter directory is complete, unaltered and made from ``fingerprint``.

    Complete and unaltered: its manifest lists the weights, config and training record with
    matching sha256. Made from ``fingerprint``: ``training.json`` records the same inputs.
    """
    path = Path(adapter_dir)
    if not path.is_dir() or verify_dir(path, RUN_ADAPTER_FILES) is not None:
        return False
    try:
        return read_json(path / RECORD_FILE, "training record").get("fingerprint") == fingerprint
    except OsrmError:  # unreadable: trained again
        return False


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> PeftModel:
    """``PeftModel.from_pretrained`` from safetensors only (a pickle-only directory is refused).

    An adapter directory with an ``osrm_manifest.json`` must also match it; an adapter that
    does not fit ``model`` (other target modules, other shapes) is one :class:`OsrmError` line.
    """
    require_safetensors(adapter_dir)
    if (Path(adapter_dir) / MANIFEST_FILE).is_file():
        problem = verify_dir(adapter_dir)
        if problem:
            raise OsrmError(problem)
    try:
        # transformers' FutureWarning and peft's UserWarning are about library internals the
        # user cannot act on; on the command line they would precede the one error line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            return PeftModel.from_pretrained(model, str(adapter_dir))
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        text = one_line(e)
        raise OsrmError(
            f"{adapter_dir}: peft cannot load this adapter onto the base model ({text[:300]})"
        ) from None


def load_provenance(adapter_dir: str | Path) -> Provenance | None:
    """The provenance saved beside an adapter, or None for adapters not made by osrm."""
    path = Path(adapter_dir) / PROVENANCE_FILE
    if not path.is_file():
        return None
    data = read_json(path, "osrm provenance")
    try:
        return Provenance(**data)
    except TypeError as e:
        raise OsrmError(f"{path}: not a valid osrm provenance file ({e})") from None


def lora_config(cfg: ExperimentConfig, generate: bool = False) -> LoraConfig:
    """The peft config of every adapter in the experiment: with a task head (kept through
    modules_to_save), or (``generate``) for a causal language model, with no head."""
    return LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM" if generate else "SEQ_CLS",
    )
