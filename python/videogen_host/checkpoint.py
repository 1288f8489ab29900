"""Checkpoints: everything needed to continue a generation bit-exactly (docs/MODEL_HOST.md, "The checkpoint").

Layout::

    magic "VGHCKPT\\0" (8) | format version u16 LE (1) | body length u64 LE | body: safetensors | CRC-32 u32 LE

The CRC-32 (IEEE, as :func:`zlib.crc32`) covers everything before it. The safetensors body holds ``latents``, ``rng``
(the torch generator state, ``uint8``), the adapter's stored conditioning tensors (``prompt_embeds`` ...) and
``scheduler.<attr>`` / ``scheduler.<attr>.<i>`` for every tensor the scheduler holds; its metadata key ``videogen``
is a JSON object with ``adapter``, ``model_id``, ``weights_hash``, ``request_hash``, ``step``, ``total_steps`` and
``scheduler_state`` (scalar attributes, and which tensor / list attributes exist and which list entries are None).

This module imports torch only when it is handed torch tensors (the ``noop`` adapter stays torch-free).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CheckpointMismatch, CorruptCheckpoint

if TYPE_CHECKING:
    import torch

MAGIC = b"VGHCKPT\0"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sHQ")
_CRC = struct.Struct("<I")
OVERHEAD = _HEAD.size + _CRC.size  # 22 bytes around the body
META_KEY = "videogen"
SCHEDULER_PREFIX = "scheduler."

# Scheduler attributes never captured: the frozen config (rebuilt from the model dir) and derived views of it.
_SCHEDULER_SKIP = frozenset({"_internal_dict", "config"})

Array = Any  # torch.Tensor | np.ndarray


# --------------------------------------------------------------------------------------------------------------------
# Outer container


def pack(body: bytes) -> bytes:
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(body))
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + body + _CRC.pack(crc)


def unpack(data: bytes | bytearray | memoryview) -> memoryview:
    """Checks magic, length and CRC (:class:`CorruptCheckpoint`), then the format version; returns the body."""
    view = memoryview(data).cast("B")
    if view.nbytes < OVERHEAD:
        raise CorruptCheckpoint(f"checkpoint of {view.nbytes} bytes is shorter than its {OVERHEAD}-byte frame")
    magic, version, body_len = _HEAD.unpack(view[: _HEAD.size])
    if magic != MAGIC:
        raise CorruptCheckpoint(f"bad checkpoint magic {bytes(magic)!r}")
    if body_len != view.nbytes - OVERHEAD:
        raise CorruptCheckpoint(f"checkpoint body length {body_len} does not match its {view.nbytes} bytes")
    (crc,) = _CRC.unpack(view[view.nbytes - _CRC.size :])
    if zlib.crc32(view[: view.nbytes - _CRC.size]) != crc:
        raise CorruptCheckpoint("checkpoint CRC-32 mismatch")
    if version != FORMAT_VERSION:
        raise CheckpointMismatch("format_version", f"checkpoint format version {version}, this host reads 1")
    return view[_HEAD.size : _HEAD.size + body_len]


# --------------------------------------------------------------------------------------------------------------------
# Safetensors body


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_torch(x: Array) -> torch.Tensor:
    import torch

    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x).copy())
    return x.detach().to("cpu").contiguous().clone()


def _safetensors_metadata(body: memoryview) -> dict[str, str]:
    if body.nbytes < 8:
        raise CorruptCheckpoint("checkpoint body is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", body[:8])
    if n > body.nbytes - 8:
        raise CorruptCheckpoint("checkpoint body is not a safetensors file (header overruns)")
    try:
        header = json.loads(bytes(body[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint body has an unreadable safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CorruptCheckpoint("checkpoint body has a malformed safetensors header")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CorruptCheckpoint("checkpoint body has malformed safetensors metadata")
    return meta


def _dense_strides(t: torch.Tensor) -> list[int] | None:
    """The strides of a non-contiguous but dense, non-overlapping tensor (a permuted layout), else None."""
    if t.is_contiguous() or t.numel() <= 1:
        return None
    dims = sorted(range(t.dim()), key=lambda d: (t.stride(d), -d))
    expect = 1
    for d in dims:
        if t.size(d) == 1:
            continue
        if t.stride(d) != expect:
            return None
        expect *= t.size(d)
    return list(t.stride())


def _with_strides(t: torch.Tensor, strides: list[int]) -> torch.Tensor:
    import torch

    out = torch.empty_strided(tuple(t.shape), tuple(strides), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def encode_body(meta: dict[str, Any], tensors: dict[str, Array]) -> bytes:
    """A safetensors file of ``tensors`` whose metadata ``videogen`` is ``meta`` as JSON.

    Tensors are stored contiguously; a permuted (dense, non-overlapping) layout is recorded in ``meta["strides"]``
    and rebuilt on decode, since reductions and matmuls may round differently on another memory layout.
    """
    if any(_is_torch(v) for v in tensors.values()):
        from safetensors.torch import save as save_torch

        strides = {}
        for k, v in tensors.items():
            if _is_torch(v):
                st = _dense_strides(v)
                if st is not None:
                    strides[k] = st
        if strides:
            meta = {**meta, "strides": strides}
        metadata = {META_KEY: _dumps(meta)}
        return save_torch({k: _to_torch(v) for k, v in tensors.items()}, metadata=metadata)
    metadata = {META_KEY: _dumps(meta)}
    from safetensors.numpy import save as save_numpy

    return save_numpy({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def decode_body(body: memoryview, framework: str) -> tuple[dict[str, Any], dict[str, Array]]:
    metadata = _safetensors_metadata(body)
    raw = metadata.get(META_KEY)
    if raw is None:
        raise CorruptCheckpoint(f"checkpoint has no {META_KEY!r} metadata")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CorruptCheckpoint(f"checkpoint metadata is not JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CorruptCheckpoint("checkpoint metadata is not a JSON object")
    try:
        if framework == "torch":
            from safetensors.torch import load as load_torch

            # clone: fresh, allocator-aligned storage (a view into the bytes may be misaligned, and SIMD reductions
            # over misaligned data can round differently from the uninterrupted run)
            tensors: dict[str, Array] = {k: v.clone() for k, v in load_torch(bytes(body)).items()}
            strides = meta.get("strides") or {}
            for k, st in strides.items():
                if k in tensors:
                    tensors[k] = _with_strides(tensors[k], st)
        else:
            from safetensors.numpy import load as load_numpy

            tensors = {k: np.array(v, copy=True) for k, v in load_numpy(bytes(body)).items()}
    except Exception as e:
        raise CorruptCheckpoint(f"checkpoint body is not a readable safetensors file: {e}") from e
    return meta, tensors


def encode(meta: dict[str, Any], tensors: dict[str, Array]) -> bytes:
    return pack(encode_body(meta, tensors))


def decode(data: bytes | bytearray | memoryview, framework: str = "torch") -> tuple[dict[str, Any], dict[str, Array]]:
    """Parses and CRC-checks a checkpoint; ``framework`` is ``"torch"`` or ``"numpy"`` for the returned tensors."""
    return decode_body(unpack(data), framework)


# --------------------------------------------------------------------------------------------------------------------
# Metadata and verification


@dataclass
class Identity:
    """What a checkpoint must match to be resumed here."""

    adapter: str
    weights_hash: str
    request_hash: str
    model_id: str = ""
    dtype: str = ""
    total_steps: int = 0


def make_meta(
    ident: Identity,
    step: int,
    scheduler_state: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
    image_sha256: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "image_sha256": image_sha256,
        "format": FORMAT_VERSION,
        "adapter": ident.adapter,
        "model_id": ident.model_id,
        "weights_hash": ident.weights_hash,
        "request_hash": ident.request_hash,
        "dtype": ident.dtype,
        "step": step,
        "total_steps": ident.total_steps,
        "scheduler_state": scheduler_state,
    }
    if extra:
        meta["extra"] = extra
    return meta


def verify_identity(meta: dict[str, Any], ident: Identity) -> None:
    """Checks adapter, weights_hash, request_hash (in that order), then dtype (:class:`CheckpointMismatch`)."""
    for key in ("adapter", "weights_hash", "request_hash"):
        got = meta.get(key)
        want = getattr(ident, key)
        if got != want:
            raise CheckpointMismatch(key, f"checkpoint {key} is {got!r}, this generation has {want!r}")
    if ident.dtype and meta.get("dtype") != ident.dtype:
        raise CheckpointMismatch("dtype", f"checkpoint dtype is {meta.get('dtype')!r}, the model runs {ident.dtype!r}")


def verify_step(meta: dict[str, Any], total_steps: int) -> int:
    """The checkpoint's step, checked against the generation's number of loop iterations."""
    step = meta.get("step")
    total = meta.get("total_steps")
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(total, int) or isinstance(total, bool):
        raise CorruptCheckpoint("checkpoint metadata lacks an integer step / total_steps")
    if total != total_steps or not 0 <= step <= total:
        raise CheckpointMismatch(
            "total_steps", f"checkpoint at step {step} of {total}, this generation has {total_steps}"
        )
    return step


def verify(meta: dict[str, Any], ident: Identity) -> int:
    """:func:`verify_identity` then :func:`verify_step` against ``ident.total_steps``; returns the step."""
    verify_identity(meta, ident)
    return verify_step(meta, ident.total_steps)


def require(tensors: dict[str, Array], *names: str) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise CorruptCheckpoint(f"checkpoint lacks tensor(s) {', '.join(missing)}")


# --------------------------------------------------------------------------------------------------------------------
# JSON encoding of scalar state (exact round trip of floats, tuples, non-finite values)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class _NotScalar(Exception):
    pass


def encode_scalar(v: Any) -> Any:
    """JSON form of a scalar-ish attribute value; raises ``_NotScalar`` for anything holding tensors or objects."""
    if isinstance(v, np.generic) and not isinstance(v, np.object_):
        return {"$np": v.dtype.str, "v": encode_scalar(v.item())}
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return float(v)
        return {"$float": repr(float(v))}
    if isinstance(v, tuple):
        return {"$tuple": [encode_scalar(x) for x in v]}
    if isinstance(v, list):
        return [encode_scalar(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"$dict": {k: encode_scalar(x) for k, x in v.items()}}
    raise _NotScalar(type(v).__name__)


def decode_scalar(v: Any) -> Any:
    if isinstance(v, list):
        return [decode_scalar(x) for x in v]
    if isinstance(v, dict):
        if "$float" in v:
            return float(v["$float"])
        if "$np" in v:
            return np.dtype(v["$np"]).type(decode_scalar(v["v"]))
        if "$tuple" in v:
            return tuple(decode_scalar(x) for x in v["$tuple"])
        if "$dict" in v:
            return {k: decode_scalar(x) for k, x in v["$dict"].items()}
        raise CorruptCheckpoint(f"unknown scalar encoding {sorted(v)}")
    return v


# --------------------------------------------------------------------------------------------------------------------
# Scheduler state


def _array_kind(x: Any) -> str | None:
    if _is_torch(x):
        return "torch"
    if isinstance(x, np.ndarray) and x.dtype != np.object_:
        return "numpy"
    return None


@dataclass
class SchedulerCapture:
    state: dict[str, Any]
    tensors: dict[str, Array] = field(default_factory=dict)


def capture_scheduler(scheduler: Any) -> SchedulerCapture:
    """Every tensor / numpy array attribute, list-of-tensor-or-None attribute and scalar attribute of ``scheduler``.

    The returned ``state`` (JSON) has ``class``, ``scalars`` (attr -> encoded value), ``tensors`` (attr -> "torch" |
    "numpy"), ``lists`` (attr -> {"tuple": bool, "entries": ["torch" | "numpy" | null | {"value": v}]}) and
    ``skipped`` (attributes that are neither, left to ``set_timesteps`` on resume).
    """
    scalars: dict[str, Any] = {}
    tensor_kinds: dict[str, str] = {}
    lists: dict[str, Any] = {}
    skipped: list[str] = []
    tensors: dict[str, Array] = {}
    for name in sorted(vars(scheduler)):
        if name in _SCHEDULER_SKIP:
            continue
        value = vars(scheduler)[name]
        kind = _array_kind(value)
        if kind is not None:
            tensor_kinds[name] = kind
            tensors[f"{SCHEDULER_PREFIX}{name}"] = value
            continue
        if isinstance(value, (list, tuple)) and any(_array_kind(x) is not None for x in value):
            entries: list[Any] = []
            ok = True
            for i, x in enumerate(value):
                k = _array_kind(x)
                if k is not None:
                    entries.append(k)
                    tensors[f"{SCHEDULER_PREFIX}{name}.{i}"] = x
                elif x is None:
                    entries.append(None)
                else:
                    try:
                        entries.append({"value": encode_scalar(x)})
                    except _NotScalar:
                        ok = False
                        break
            if ok:
                lists[name] = {"tuple": isinstance(value, tuple), "entries": entries}
            else:
                for i in range(len(value)):
                    tensors.pop(f"{SCHEDULER_PREFIX}{name}.{i}", None)
                skipped.append(name)
            continue
        try:
            scalars[name] = encode_scalar(value)
        except _NotScalar:
            skipped.append(name)
    state = {
        "class": type(scheduler).__name__,
        "scalars": scalars,
        "tensors": tensor_kinds,
        "lists": lists,
        "skipped": skipped,
    }
    return SchedulerCapture(state, tensors)


def _restore_array(kind: str, value: Array, like: Any, device: Any) -> Any:
    if kind == "numpy":
        return value.numpy() if _is_torch(value) else np.asarray(value)
    if _is_torch(like):
        return value.to(like.device)
    return value.to(device) if device is not None else value


def restore_scheduler(scheduler: Any, state: Any, tensors: dict[str, Array], device: Any = None) -> None:
    """Sets every captured attribute on a scheduler that went through the same ``set_timesteps``.

    Tensors go to the device the fresh scheduler keeps that attribute on, else to ``device``.
    """
    if not isinstance(state, dict):
        raise CorruptCheckpoint("checkpoint has no scheduler_state")
    cls = state.get("class")
    if cls != type(scheduler).__name__:
        raise CheckpointMismatch(
            "scheduler", f"checkpoint scheduler is {cls}, the model has {type(scheduler).__name__}"
        )
    try:
        current = vars(scheduler)
        for name, kind in state["tensors"].items():
            key = f"{SCHEDULER_PREFIX}{name}"
            require(tensors, key)
            setattr(scheduler, name, _restore_array(kind, tensors[key], current.get(name), device))
        for name, spec in state["lists"].items():
            items: list[Any] = []
            for i, entry in enumerate(spec["entries"]):
                if entry is None:
                    items.append(None)
                elif isinstance(entry, dict):
                    items.append(decode_scalar(entry["value"]))
                else:
                    key = f"{SCHEDULER_PREFIX}{name}.{i}"
                    require(tensors, key)
                    items.append(_restore_array(entry, tensors[key], None, device))
            setattr(scheduler, name, tuple(items) if spec["tuple"] else items)
        for name, value in state["scalars"].items():
            setattr(scheduler, name, decode_scalar(value))
    except (KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpoint(f"checkpoint scheduler_state is malformed: {e!r}") from e


# --------------------------------------------------------------------------------------------------------------------
# torch Generator


def generator_state(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state().clone()


def restore_generator(generator: torch.Generator, state: Array) -> None:
    import torch

    t = state if _is_torch(state) else torch.from_numpy(np.asarray(state))
    try:
        generator.set_state(t.to(device="cpu", dtype=torch.uint8).contiguous())
    except (RuntimeError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint rng state is unusable: {e}") from e


def clone_generator(generator: torch.Generator) -> torch.Generator:
    """An independent generator in the same state (so a preview decode cannot perturb the run)."""
    import torch

    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


def global_rng_state(device: str) -> dict[str, torch.Tensor]:
    """torch's global RNG (``rng_global``, and ``rng_global_cuda`` for the current GPU on a CUDA host)."""
    import torch

    out = {"rng_global": torch.get_rng_state().clone()}
    if device == "cuda" and torch.cuda.is_available():
        out["rng_global_cuda"] = torch.cuda.get_rng_state().clone()
    return out


def restore_global_rng(cpu: Array, cuda: Array | None = None) -> None:
    import torch

    try:
        torch.set_rng_state(torch.as_tensor(cpu).to(device="cpu", dtype=torch.uint8))
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.as_tensor(cuda).to(device="cpu", dtype=torch.uint8))
    except (RuntimeError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint global rng state is unusable: {e}") from e
