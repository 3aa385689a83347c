"""Delta weights: publish a fine-tune as its difference from the base, rebuild it exactly (`camelid weights`).

Vicuna and StableVicuna were released as deltas over LLaMA because only the base's owner may distribute it:
`diff BASE TUNED -o DELTA` writes what a user needs besides the base, `apply BASE DELTA -o TARGET` rebuilds
TUNED. Both stream tensor by tensor from safetensors files (`safe_open` reads nothing until asked) and write
the output one shard at a time, so memory stays near one output shard; `--low-memory` makes that shard small
(FastChat's `apply_delta --low-cpu-mem` splits the work the same way).

Encoding: a delta tensor is the bitwise XOR of the tuned tensor's bits with the base tensor's bits, stored as
the integer type of the same width (int32 for fp32, int16 for bf16/fp16). XOR is its own inverse on bit
patterns, so `apply` reproduces the tuned weights bit for bit in every dtype. FastChat stores `tuned - base`
as floats instead; `base + (tuned - base)` rounds differently from `tuned` in bf16/fp16 (and in fp32 when the
exponents differ), so the rebuilt model is only close. XOR deltas are equally useless without the base, an
unchanged tensor is all zeros, and small changes leave the sign and exponent bits zero: on a SmolLM2 MLP
weight with 0.1% noise, zlib shrinks the XOR delta to 0.73 (fp32) / 0.18 (bf16) of its size, the float
difference to 0.73 / 0.20 and the raw weights to 0.93 / 0.75. When a base tensor's
dtype differs from the tuned one it is cast first (a deterministic rounding); when the tuned tensor grew
(embeddings resized for added tokens) the base is zero-padded, so the new rows are stored as they are; a
tensor without a usable base counterpart is stored raw (XOR with zeros).

Checksums (`delta.json`): the sha256 of every base tensor's stored bytes and of every target tensor, plus a
digest over each. `apply` compares shapes and dtypes of the whole base before it reads any data, hashes each
base tensor as it reads it (a wrong base is refused, naming the first tensor that differs) and checks each
rebuilt tensor against the recorded target hash. Output goes to a temporary directory renamed into place at
the end: a refused or interrupted apply leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from camelid.core.cli import console
from camelid.core.io import CamelidError, DataError, Problem, atomic_dir, parse_size, read_json, write_json
from camelid.models.checkpoint import base_checkpoint

DELTA_FILE = "delta.json"
FORMAT = "camelid-delta"
DEFAULT_SHARD = "5GB"  # transformers' usual max_shard_size
LOW_MEMORY_SHARD = "1GB"
# weights in any format stay out of a delta (it must never hold the tuned model): by name, and by content for a
# renamed file (GGUF, torch zip/pickle, numpy, HDF5, safetensors headers)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".ggjt", ".h5", ".msgpack",
                   ".onnx", ".npz", ".npy", ".pkl", ".pickle", ".tflite", ".mlmodel", ".llamafile", ".exl2", ".awq")
WEIGHT_MAGICS = (b"GGUF", b"ggjt", b"ggml", b"lmgg", b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04",
                 b"\x80\x05", b"\x93NUMPY", b"\x89HDF\r\n")
SIDE_FILE_MAX = 64 << 20  # config, tokenizer and run files are far smaller; anything bigger is left out, said so


# ---------------------------------------------------------------------------------------------- helpers


def resolve_source(spec: str | os.PathLike) -> Path:
    """A checkpoint directory from `embedded`, `hf:PATH` or a path; adapters and .bin checkpoints are refused."""
    path = base_checkpoint(spec)
    if not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise CamelidError(f"{path}: no .safetensors weights here (re-save the model with "
                           "save_pretrained(..., safe_serialization=True))")
    return path


def _torch_dtype(name: str):
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
    if name not in table:
        raise CamelidError(f"tensor dtype {name} is not supported")
    return table[name]


def _bits(t):
    """The tensor's bit patterns as the signed integer type of the same width (a view, no copy)."""
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    t = t.contiguous()
    return t.view(ints[t.element_size()]) if t.dim() else t.reshape(1).view(ints[t.element_size()]).reshape(())


def tensor_sha256(t) -> str:
    import torch

    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _digest(hashes: dict[str, str | None]) -> str:
    return hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in sorted(hashes.items()) if v).encode()).hexdigest()


def _align(base, dtype, shape: list[int]):
    """The base tensor as the target's dtype and shape (cast; zero-padded when the target grew), or None."""
    import torch

    if base.dtype != dtype:
        base = base.to(dtype)
    if list(base.shape) == list(shape):
        return base
    if base.dim() != len(shape) or any(b > s for b, s in zip(base.shape, shape)):
        return None
    padded = torch.zeros(shape, dtype=dtype)
    padded[tuple(slice(0, b) for b in base.shape)] = base
    return padded


# ---------------------------------------------------------------------------------------------- reading


class Checkpoint:
    """The safetensors files of a checkpoint, read one tensor at a time."""

    def __init__(self, path: Path, prefix: str = "model"):
        from safetensors import safe_open

        self.path = Path(path)
        index = self.path / f"{prefix}.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise DataError(Problem(str(index), None, "weight_map", "missing or not an object"))
            files = list(dict.fromkeys(self.path / f for f in weight_map.values()))
        elif (self.path / f"{prefix}.safetensors").is_file():
            files = [self.path / f"{prefix}.safetensors"]
        else:
            files = sorted(p for p in self.path.glob(f"{prefix}*.safetensors"))
        if not files:
            raise CamelidError(f"{self.path}: no {prefix}*.safetensors files")
        self.files = files
        self._open: dict[Path, Any] = {}
        self.where: dict[str, Path] = {}
        for f in files:
            if not f.is_file():
                raise CamelidError(f"{f}: listed in {index.name} but missing")
            try:
                handle = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise CamelidError(f"{f}: not a readable safetensors file ({e})") from None
            self._open[f] = handle
            for name in handle.keys():
                self.where.setdefault(name, f)

    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def info(self, name: str) -> tuple[str, list[int]]:
        s = self._open[self.where[name]].get_slice(name)
        return s.get_dtype(), list(s.get_shape())

    def get(self, name: str):
        # a handle of its own: pages read through a long-lived handle's mmap stay in RSS until it closes
        from safetensors import safe_open

        with safe_open(str(self.where[name]), framework="pt") as f:
            return f.get_tensor(name)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def _looks_like_weights(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(WEIGHT_MAGICS):
        return True
    # safetensors: an 8-byte little-endian header length, then the JSON header
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def side_files(src: Path, encoded: frozenset[str] = frozenset()) -> tuple[list[Path], list[str]]:
    """(files to copy, files left out with why): config, generation config, tokenizer and run files at the top
    level; never weights in any format (by suffix or content), nor anything over SIDE_FILE_MAX. `encoded`: the
    checkpoint's own weight files and index, which the delta encodes (not left out)."""
    keep, left_out = [], []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name == DELTA_FILE or p.name in encoded:
            continue
        if p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".safetensors.index.json") or ".gguf" in p.name:
            left_out.append(f"{p.name} (weights)")
        elif p.stat().st_size > SIDE_FILE_MAX:
            left_out.append(f"{p.name} (over {SIDE_FILE_MAX >> 20} MiB: not a config or tokenizer file)")
        elif _looks_like_weights(p):
            left_out.append(f"{p.name} (weights, by content)")
        else:
            keep.append(p)
    return keep, left_out


# ---------------------------------------------------------------------------------------------- writing


class ShardWriter:
    """Collects tensors into shards of at most `max_bytes` and writes each as soon as it is full."""

    def __init__(self, directory: Path, prefix: str, max_bytes: int):
        self.dir, self.prefix, self.max_bytes = directory, prefix, max_bytes
        self.parts: list[tuple[Path, list[str]]] = []
        self.current: dict[str, Any] = {}
        self.size = 0
        self.total = 0

    def add(self, name: str, tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        if self.current and self.size + n > self.max_bytes:
            self.flush()
        self.current[name] = tensor
        self.size += n
        self.total += n

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.current:
            return
        path = self.dir / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.parts.append((path, list(self.current)))
        self.current, self.size = {}, 0

    def finish(self) -> dict[str, str]:
        """Name the shards like transformers does; write the index when there is more than one. name -> file."""
        self.flush()
        n = len(self.parts)
        weight_map: dict[str, str] = {}
        for i, (path, names) in enumerate(self.parts, 1):
            final = f"{self.prefix}.safetensors" if n == 1 else f"{self.prefix}-{i:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.dir / final)
            weight_map.update(dict.fromkeys(names, final))
        if n > 1:
            write_json(self.dir / f"{self.prefix}.safetensors.index.json",
                       {"metadata": {"total_size": self.total}, "weight_map": weight_map})
        return weight_map


def _shard_bytes(low_memory: bool, shard_size: str | int | None) -> int:
    return parse_size(shard_size or (LOW_MEMORY_SHARD if low_memory else DEFAULT_SHARD))


# ---------------------------------------------------------------------------------------------- diff / apply


def diff_weights(base: str | os.PathLike, tuned: str | os.PathLike, out: str | os.PathLike, *,
                 low_memory: bool = False, shard_size: str | int | None = None, force: bool = False) -> Path:
    """Write the XOR delta of TUNED over BASE (with checksums) and TUNED's config/tokenizer files to `out`."""
    base_dir, tuned_dir = resolve_source(base), resolve_source(tuned)
    B, T = Checkpoint(base_dir), Checkpoint(tuned_dir)
    records: dict[str, dict] = {}
    with atomic_dir(out, force) as tmp:
        writer = ShardWriter(tmp, "delta", _shard_bytes(low_memory, shard_size))
        for name in T.names():
            t = T.get(name)
            dtype, shape = T.info(name)
            rec: dict[str, Any] = {"dtype": dtype, "shape": shape, "sha256": tensor_sha256(t), "base_sha256": None}
            bits = _bits(t).clone()
            if name in B:
                b = B.get(name)
                rec["base_dtype"], rec["base_shape"] = B.info(name)
                aligned = _align(b, t.dtype, shape)
                if aligned is not None:
                    rec["base_sha256"] = tensor_sha256(b)
                    bits ^= _bits(aligned)
                del b, aligned
            writer.add(name, bits)
            records[name] = rec
            del t, bits
        for name, file in writer.finish().items():
            records[name]["file"] = file
        encoded = frozenset([*(f.name for f in T.files), "model.safetensors.index.json"])
        copied, left_out = side_files(tuned_dir, encoded)
        for f in copied:
            shutil.copy2(f, tmp / f.name)
        for line in left_out:
            console.print(f"[yellow]not copied into the delta:[/] {tuned_dir / line}", soft_wrap=True)
        write_json(tmp / DELTA_FILE, {
            "format": FORMAT, "version": 1, "encoding": "xor",
            "base": {"path": str(base_dir), "tensors": len(B.names()),
                     "sha256": _digest({k: r["base_sha256"] for k, r in records.items()})},
            "left_out": left_out,  # never the tuned weights in any format
            "target": {"path": str(tuned_dir), "tensors": len(records),
                       "sha256": _digest({k: r["sha256"] for k, r in records.items()})},
            "tensors": records})
    return Path(out)


def read_delta(delta: str | os.PathLike) -> dict:
    path = Path(delta) / DELTA_FILE
    if not path.is_file():
        raise CamelidError(f"{delta}: not a camelid delta (no {DELTA_FILE}; make one with camelid weights diff)")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("tensors"), dict):
        raise DataError(Problem(str(path), None, "format", f"expected a {FORMAT} file"))
    if meta.get("encoding") != "xor" or meta.get("version") != 1:
        raise DataError(Problem(str(path), None, "encoding", f"unsupported delta encoding {meta.get('encoding')!r} "
                                f"version {meta.get('version')!r}"))
    return meta


def _check_base_headers(B: Checkpoint, meta: dict, base_dir: Path) -> None:
    """Refuse a wrong base from its headers alone (names, dtypes, shapes) before reading any data."""
    made_from = meta.get("base", {}).get("path", "?")
    for name, rec in meta["tensors"].items():
        if not rec.get("base_sha256"):
            continue
        if name not in B:
            raise CamelidError(f"{base_dir}: not the base this delta was made from ({made_from}): tensor {name!r} "
                               "is missing")
        dtype, shape = B.info(name)
        if (dtype, shape) != (rec.get("base_dtype"), rec.get("base_shape")):
            raise CamelidError(f"{base_dir}: not the base this delta was made from ({made_from}): tensor {name!r} is "
                               f"{dtype}{shape}, expected {rec.get('base_dtype')}{rec.get('base_shape')}")


def apply_delta(base: str | os.PathLike, delta: str | os.PathLike, out: str | os.PathLike, *,
                low_memory: bool = False, shard_size: str | int | None = None, force: bool = False) -> Path:
    """Rebuild the tuned checkpoint from BASE and a delta; every base and target tensor is checksummed."""
    meta = read_delta(delta)
    base_dir = resolve_source(base)
    B = Checkpoint(base_dir)
    D = Checkpoint(Path(delta), prefix="delta")
    _check_base_headers(B, meta, base_dir)
    made_from = meta.get("base", {}).get("path", "?")
    names = sorted(meta["tensors"], key=lambda n: (D.files.index(D.where[n]) if n in D else -1))
    with atomic_dir(out, force) as tmp:
        writer = ShardWriter(tmp, "model", _shard_bytes(low_memory, shard_size))
        for name in names:
            rec = meta["tensors"][name]
            if name not in D:
                raise CamelidError(f"{delta}: tensor {name!r} is listed in {DELTA_FILE} but not in the delta files")
            bits = D.get(name)
            dtype = _torch_dtype(rec["dtype"])
            if rec.get("base_sha256"):
                b = B.get(name)
                found = tensor_sha256(b)
                if found != rec["base_sha256"]:
                    raise CamelidError(f"{base_dir}: not the base this delta was made from ({made_from}): tensor "
                                       f"{name!r} differs (sha256 {found[:12]}, expected {rec['base_sha256'][:12]})")
                bits ^= _bits(_align(b, dtype, rec["shape"]))  # in place: `bits` is this call's own copy
                del b
            t = bits.view(dtype) if bits.dim() else bits.reshape(1).view(dtype).reshape(())
            if tensor_sha256(t) != rec["sha256"]:
                raise CamelidError(f"{delta}: tensor {name!r} does not match the recorded target checksum (the delta "
                                   "files are damaged or were edited)")
            writer.add(name, t)
            del bits, t
        writer.finish()
        for f in side_files(Path(delta))[0]:
            shutil.copy2(f, tmp / f.name)
    return Path(out)


def verify_same(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """None when two checkpoints hold the same tensors bit for bit, else the first difference (for tests/CLI)."""
    A, Bc = Checkpoint(resolve_source(a)), Checkpoint(resolve_source(b))
    if set(A.names()) != set(Bc.names()):
        return f"tensor names differ: {sorted(set(A.names()) ^ set(Bc.names()))[:3]}"
    for name in A.names():
        if A.info(name) != Bc.info(name) or tensor_sha256(A.get(name)) != tensor_sha256(Bc.get(name)):
            return f"tensor {name!r} differs"
    return None
