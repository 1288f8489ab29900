"""What every adapter provides: a loaded model that starts / resumes generations, one step at a time."""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint
from ..errors import InvalidRequest, LoadFailed
from ..request import Request, request_hash


@dataclass
class ModelSpec:
    """The ``model`` object of a ``load`` request."""

    id: str
    adapter: str
    path: str
    dtype: str | dict[str, str] | None

    def dtype_key(self, device: str = "cpu") -> str:
        """The canonical dtype choice (part of a checkpoint's identity): ``float32``, ``bfloat16``, ``float16``, or
        for a per-component choice the sorted JSON object of canonical names with ``default`` filled in."""
        default = "float32" if device == "cpu" else "bfloat16"
        if isinstance(self.dtype, dict):
            canon = {str(k): canonical_dtype(v) for k, v in self.dtype.items()}
            canon.setdefault("default", default)
            return json.dumps(canon, sort_keys=True, separators=(",", ":"))
        if self.dtype is None or self.dtype == "":
            return default
        return canonical_dtype(self.dtype)


DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def canonical_dtype(name: object) -> str:
    """``float32`` / ``bfloat16`` / ``float16`` for a known name or alias, the name itself otherwise."""
    return DTYPE_NAMES.get(str(name).lower(), str(name))


@dataclass
class Audio:
    sample_rate: int
    channels: int
    pcm: np.ndarray  # float32, shape (samples, channels)


@dataclass
class Video:
    frames: np.ndarray  # uint8, shape (frames, height, width, 3)
    fps: int
    audio: Audio | None = None


@dataclass
class Supports:
    image_to_video: bool
    audio: bool
    negative_prompt: bool
    guidance_scale: bool
    text_to_video: bool = True

    def to_json(self) -> dict[str, bool]:
        return {
            "image_to_video": self.image_to_video,
            "audio": self.audio,
            "negative_prompt": self.negative_prompt,
            "guidance_scale": self.guidance_scale,
            "text_to_video": self.text_to_video,
        }


def read_model_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path) / "model_index.json"
    try:
        data = json.loads(p.read_text("utf-8"))
    except FileNotFoundError as e:
        raise LoadFailed(f"{p} does not exist") from e
    except (OSError, ValueError) as e:
        raise LoadFailed(f"cannot read {p}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise LoadFailed(f"{p} has no _class_name")
    return data


def check_supported(req: Request, supports: Supports) -> None:
    """Rejects request features the model does not have (``param`` names the field)."""
    if req.image is not None and not supports.image_to_video:
        raise InvalidRequest("this model does not take a conditioning image", "image")
    if req.image is None and not supports.text_to_video:
        raise InvalidRequest("this model is image-to-video: `image` is required", "image")
    if req.negative_prompt and not supports.negative_prompt:
        raise InvalidRequest("this model does not use a negative prompt", "negative_prompt")
    if req.guidance_scale is not None and not supports.guidance_scale:
        raise InvalidRequest("this model does not take a guidance scale", "guidance_scale")


def check_multiple(value: int, multiple: int, param: str, what: str = "") -> None:
    if value % multiple:
        raise InvalidRequest(f"`{param}` must be a multiple of {multiple}{what}, got {value}", param)


def check_frames(frames: int, temporal: int) -> None:
    if frames % temporal != 1 % temporal:
        raise InvalidRequest(f"`frames` must be {temporal}k+1 for this model, got {frames}", "frames")


class Generation(abc.ABC):
    """One generation in progress."""

    def __init__(self, model: LoadedModel, req: Request) -> None:
        self.model = model
        self.req = req
        self.request_hash = request_hash(req, model.adapter)
        self.step_index = 0
        self.total_steps = req.steps

    @property
    def image_sha256(self) -> str | None:
        return self.req.image.sha256 if self.req.image is not None else None

    def identity(self) -> checkpoint.Identity:
        return checkpoint.Identity(
            adapter=self.model.adapter,
            weights_hash=self.model.weights_hash,
            request_hash=self.request_hash,
            model_id=self.model.id,
            dtype=self.model.spec.dtype_key(self.model.device_kind),
            total_steps=self.total_steps,
        )

    @property
    def done(self) -> bool:
        return self.step_index >= self.total_steps

    def out_width(self) -> int:
        return self.req.width

    def out_height(self) -> int:
        return self.req.height

    def out_frames(self) -> int:
        return self.req.frames

    @abc.abstractmethod
    def step(self) -> None:
        """Exactly one denoising step (a no-op once done)."""

    @abc.abstractmethod
    def preview(self) -> dict[str, float]:
        """Cheap statistics of the current latents."""

    @abc.abstractmethod
    def checkpoint(self) -> bytes:
        """The checkpoint bytes; changes nothing about the generation."""

    @abc.abstractmethod
    def decode(self) -> Video:
        """Decodes the current latents (the final video after the last step, a preview before)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Drops references to large tensors."""


class LoadedModel(abc.ABC):
    adapter: str = ""

    def __init__(self, spec: ModelSpec, weights_hash: str, supports: Supports) -> None:
        self.spec = spec
        self.id = spec.id
        self.weights_hash = weights_hash
        self.supports = supports
        self.load_seconds = 0.0
        self.memory_bytes = 0
        self.device_kind = "cpu"

    @abc.abstractmethod
    def validate(self, req: Request) -> None:
        """Raises :class:`InvalidRequest` (with ``param``) where the pipeline cannot run ``req``."""

    @abc.abstractmethod
    def start(self, req: Request) -> Generation: ...

    @abc.abstractmethod
    def resume(self, req: Request, data: bytes | bytearray | memoryview) -> Generation: ...

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Frees what the model holds."""


@dataclass
class AdapterInfo:
    name: str
    module: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
