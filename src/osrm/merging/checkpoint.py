"""A dense merged checkpoint streamed from the base model's safetensors files (decoders, any size).

:func:`save_merged_checkpoint` never builds the model: it reads the base checkpoint's headers,
plans the output shards, then writes every tensor in turn (base tensor + merged ΔW in float32,
cast back to the tensor's own dtype) straight into the output file after a header computed up
front. Peak memory is therefore one module's tensors (the base weight, its ΔW and the k adapters'
factors), not the model: an 8B model merges on a laptop. The output is the base folder's
config and tokenizer files plus ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors``
shards with ``model.safetensors.index.json``), which ``transformers`` loads unchanged; the base
dtype is kept (a bf16 base gives a bf16 merge). For adapters without task heads (generative
tasks); a classifier's merge keeps :func:`osrm.merging.outputs.save_merged_model`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from huggingface_hub import snapshot_download
from safetensors import SafetensorError, safe_open
from torch import Tensor

from osrm.artifacts import atomic_dir, seal_dir
from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.merging.grams import StatsSource
from osrm.merging.merge import Weights
from osrm.merging.outputs import Source, plan_dense
from osrm.merging.record import write_manifest as write_merge_manifest
from osrm.models import resolve_model

INDEX_FILE = "model.safetensors.index.json"
SHARD_BYTES = 5 * 2**30  # the usual hub shard size
# safetensors dtype strings of the tensors a ΔW can be added to
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# never copied from the base folder: other weight formats (pickles among them) and manifests
_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".pkl")
_SKIP_NAMES = ("osrm_manifest.json", "osrm_merge.json", INDEX_FILE, "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Entry:
    """One tensor of the base checkpoint: its file, safetensors dtype string, shape, bytes, and
    where its bytes start in the file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    start: int


def _file_header(path: Path) -> dict[str, Entry]:
    """name -> :class:`Entry` of one safetensors file (validated by ``safe_open`` first)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except (SafetensorError, OSError, ValueError) as e:
        raise OsrmError(f"{path}: not a readable safetensors file ({e})") from None
    entries = {}
    for name in names:
        (lo, hi), v = header[name]["data_offsets"], header[name]
        entries[name] = Entry(path, v["dtype"], tuple(v["shape"]), hi - lo, 8 + size + lo)
    return entries


def base_entries(base_dir: str | Path) -> dict[str, Entry]:
    """Every tensor of a base checkpoint folder (one ``*.safetensors`` file or an indexed set)."""
    base_dir = Path(base_dir)
    index = base_dir / INDEX_FILE
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise OsrmError(f"{index}: expected a JSON object with a 'weight_map' ({e})") from None
    else:
        files = sorted(p.name for p in base_dir.glob("*.safetensors"))
    if not files:
        raise OsrmError(f"{base_dir}: no safetensors weights (model.safetensors or an index)")
    entries: dict[str, Entry] = {}
    for name in files:
        entries.update(_file_header(base_dir / name))
    return entries


def plan_shards(entries: Mapping[str, Entry], shard_bytes: int = SHARD_BYTES) -> list[list[str]]:
    """Tensor names in sorted order (the merge's order), cut into shards of at most
    ``shard_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(entries):
        if shards[-1] and size + entries[name].nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += entries[name].nbytes
    return shards


def _header_bytes(names: Sequence[str], entries: Mapping[str, Entry]) -> bytes:
    """The safetensors header of a file holding ``names`` in this order (8-byte aligned)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        e = entries[name]
        header[name] = {"dtype": e.dtype, "shape": list(e.shape),
                        "data_offsets": [offset, offset + e.nbytes]}  # fmt: skip
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    size = -(-len(text) // 8) * 8
    return size.to_bytes(8, "little") + text.ljust(size, b" ")


def _raw(tensor: Tensor) -> memoryview:
    """A tensor's bytes in C order (safetensors stores little-endian, as torch does here)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def checkpoint_dir(base: str) -> Path:
    """The local folder of a base checkpoint: a directory, an installed offline model, or (online
    or from the hub cache) a snapshot of its config, tokenizer and safetensors files."""
    local = Path(resolve_model(base))
    if local.is_dir():
        return local
    try:
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
        return Path(snapshot_download(base, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds; one line for all
        raise OsrmError(
            f"--base {base}: no local checkpoint folder and none cached ({e})"
        ) from None


def _check_modules(
    sources: Sequence[Mapping[str, Tensor]], entries: Mapping[str, Entry], base: Path
) -> list[str]:
    """The merged names, each checked against the base checkpoint (present, float, same shape)."""
    names = sorted(set().union(*sources))
    transposed = frozenset().union(*(getattr(s, "transposed", ()) for s in sources))
    for name in names:
        entry = entries.get(name)
        if entry is None:
            raise OsrmError(f"{base}: the base checkpoint has no tensor {name!r} to merge into")
        if entry.dtype not in DTYPES:
            raise OsrmError(f"{base}: {name} is {entry.dtype}, not a float tensor to merge into")
        source = next(s for s in sources if name in s)
        shape = source.shape(name) if hasattr(source, "shape") else tuple(source[name].shape)
        shape = tuple(reversed(shape)) if name in transposed else tuple(shape)
        if shape != entry.shape:
            raise OsrmError(
                f"{name}: base checkpoint {base} has shape {entry.shape} but the merged delta "
                f"{shape}; is this the adapters' base model?"
            )
    return names


def _read(src: BinaryIO, entry: Entry) -> Tensor:
    """One base tensor, read (not memory-mapped: mapped pages would count as resident)."""
    buf = torch.empty(entry.nbytes, dtype=torch.uint8)
    src.seek(entry.start)
    if src.readinto(memoryview(buf.numpy())) != entry.nbytes:
        raise OsrmError(f"{entry.file}: ends inside its tensors (truncated?)")
    return buf.view(DTYPES[entry.dtype]).reshape(entry.shape)


def _copy(src: BinaryIO, dst: BinaryIO, entry: Entry, chunk: int = 64 * 2**20) -> None:
    """A tensor the merge does not touch: its bytes as they are, at most ``chunk`` at a time."""
    src.seek(entry.start)
    left = entry.nbytes
    while left:
        data = src.read(min(chunk, left))
        if not data:
            raise OsrmError(f"{entry.file}: ends inside its tensors (truncated?)")
        dst.write(data)
        left -= len(data)


def _write_shards(
    directory: Path,
    shards: list[list[str]],
    entries: Mapping[str, Entry],
    merged: Iterator[tuple[str, Tensor]],
    transposed: frozenset[str],
) -> list[str]:
    """Write each shard, header first, then every tensor in order: base + ΔW (float32 sum,
    stored in the tensor's dtype, checked finite) where ``merged`` has one, else the base
    tensor's bytes. ``merged`` yields in sorted name order, as the shards hold them."""
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]  # fmt: skip
    pending = next(merged, None)
    with ExitStack() as stack:
        inputs = {f: stack.enter_context(open(f, "rb")) for f in {e.file for e in entries.values()}}
        for file, names in zip(files, shards, strict=True):
            with open(directory / file, "wb") as out:
                out.write(_header_bytes(names, entries))
                for name in names:
                    entry, src = entries[name], inputs[entries[name].file]
                    if pending is None or pending[0] != name:
                        _copy(src, out, entry)
                        continue
                    base = _read(src, entry)
                    delta = pending[1].T if name in transposed else pending[1]
                    tensor = delta.add_(base).to(base.dtype)  # in float32, in the ΔW's memory
                    check_finite([(name, tensor)], f"merged weights ({directory.name})")
                    out.write(_raw(tensor))
                    pending = next(merged, None)
    if n > 1:
        weight_map = {m: f for f, ms in zip(files, shards, strict=True) for m in ms}
        total = sum(e.nbytes for e in entries.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def _copy_side_files(base: Path, directory: Path) -> None:
    """The base folder's config, generation config and tokenizer files (no weights, no pickles)."""
    for path in sorted(base.iterdir()):
        if path.is_file() and not path.name.endswith(_SKIP) and path.name not in _SKIP_NAMES:
            shutil.copyfile(path, directory / path.name)


def save_merged_checkpoint(
    base: str | Path,
    sources: Sequence[Source],
    out_dir: str | Path,
    method: str,
    weights: Weights = None,
    *,
    stats: Sequence[StatsSource] | None = None,
    tasks: Sequence[str] | None = None,
    shard_bytes: int = SHARD_BYTES,
    **hp,
) -> Path:
    """Merge k task vectors into the base checkpoint's files, streaming (see the module doc).

    Args:
        base: the base checkpoint folder (or a name :func:`checkpoint_dir` resolves).
        sources: adapter directories (no task heads) or task-vector mappings.
        out_dir: written atomically: weights, the base's config/tokenizer files,
            ``osrm_merge.json`` and ``osrm_manifest.json`` (sha256).
        shard_bytes: the largest output shard (a bigger tensor gets its own).
        method, weights, stats, tasks, **hp: as in :func:`osrm.merging.merge_adapters`.
    """
    base_dir = checkpoint_dir(str(base))
    plan = plan_dense(sources, method, weights, stats, tasks, hp)
    if any(getattr(s, "head_keys", None) for s in plan.sources):
        raise OsrmError("adapters with task heads: merge them with save_merged_model (no stream)")
    entries = base_entries(base_dir)
    names = _check_modules(plan.sources, entries, base_dir)
    total = sum(e.nbytes for e in entries.values())
    free = shutil.disk_usage(Path(out_dir).absolute().parent).free
    if free < total:
        raise OsrmError(f"--out {out_dir}: the merge needs {total / 2**30:.1f} GiB, "
                        f"{free / 2**30:.1f} GiB free there")  # fmt: skip
    manifest = {**plan.manifest, "streamed_from": str(base), "modules": len(names),
                "model_head": None, "heads": {}}  # fmt: skip
    with atomic_dir(out_dir) as tmp:
        shards = plan_shards(entries, shard_bytes)
        manifest["files"] = _write_shards(tmp, shards, entries, plan.stream(hp), plan.transposed)
        _copy_side_files(base_dir, tmp)
        write_merge_manifest(tmp, manifest)
        seal_dir(tmp)
    return Path(out_dir)
