"""``noop``: a model without a model, for protocol-overhead benchmarks and fast worker integration tests.

Imports no torch. The model dir holds ``model_index.json`` (``"_class_name": "VideogenNoopPipeline"``) and
``*.safetensors`` weights that must parse (a damaged file is ``load_failed``). Latents are zeros of shape
``(1, 4, ceil(frames / 4), ceil(height / 8), ceil(width / 8))``; a step only counts; checkpoints go through
:mod:`videogen_host.checkpoint` like every adapter's. Decoded frame ``i`` is filled with the byte
``(seed + 31 * step + i) % 256``, where ``step`` is the number of steps done. Accepts every request feature
(image, negative prompt, guidance scale): they only enter the request hash.

Optional ``model_index.json`` keys (for tests of the worker):

- ``"audio": {"sample_rate": R, "channels": C}``: decode also sends ``round(frames / fps * R)`` samples of
  interleaved ``f32`` PCM, every value ``(seed % 256) / 255``.
- ``"step_ms": N``: each step sleeps N milliseconds.
- ``"crash_at_step": K``: the host process exits (status 101) when asked to run step K (0-based), without a reply;
  with ``"crash_marker": PATH`` only while PATH does not exist (it is created first), i.e. once.
- ``"oom_at_step": K``: step K fails with ``out_of_memory`` (like every failed step, this drops the generation).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint, weights
from ..errors import CorruptCheckpoint, HostError, InvalidRequest, LoadFailed
from ..request import Request, with_image_digest
from .base import Audio, Generation, LoadedModel, ModelSpec, Supports, Video, check_multiple, read_model_index

log = logging.getLogger(__name__)

CLASS_NAME = "VideogenNoopPipeline"
CRASH_EXIT_CODE = 101


class NoopScheduler:
    """Just enough scheduler state to exercise the generic capture / restore."""

    def __init__(self, steps: int) -> None:
        self.timesteps = np.linspace(1000.0, 0.0, steps, endpoint=False, dtype=np.float32)
        self._step_index = 0
        self._begin_index = 0


class NoopGeneration(Generation):
    def __init__(self, model: NoopModel, req: Request) -> None:
        super().__init__(model, req)
        self.noop = model
        self.scheduler = NoopScheduler(req.steps)
        shape = (1, 4, math.ceil(req.frames / 4), math.ceil(req.height / 8), math.ceil(req.width / 8))
        self.latents = np.zeros(shape, dtype=np.float32)
        self.rng = np.frombuffer(req.seed.to_bytes(8, "little"), dtype=np.uint8).copy()

    def step(self) -> None:
        if self.done:
            return
        cfg = self.noop.index
        k = self.step_index
        if cfg.get("crash_at_step") == k:
            marker = cfg.get("crash_marker")
            if not marker or not Path(marker).exists():
                if marker:
                    Path(marker).touch()
                log.error("noop: simulated crash at step %d", k)
                sys.stderr.flush()
                os._exit(CRASH_EXIT_CODE)
        if cfg.get("oom_at_step") == k:
            raise HostError("out_of_memory", f"noop: simulated out of memory at step {k}")
        ms = cfg.get("step_ms") or 0
        if ms:
            time.sleep(float(ms) / 1000.0)
        self.step_index = k + 1
        self.scheduler._step_index = self.step_index

    def preview(self) -> dict[str, float]:
        return {"mean": 0.0, "std": 0.0}

    def checkpoint(self) -> bytes:
        cap = checkpoint.capture_scheduler(self.scheduler)
        tensors: dict[str, Any] = {"latents": self.latents, "rng": self.rng, **cap.tensors}
        meta = checkpoint.make_meta(self.identity(), self.step_index, cap.state, {"cond": {}}, self.image_sha256)
        return checkpoint.encode(meta, tensors)

    def restore(self, meta: dict[str, Any], tensors: dict[str, Any]) -> None:
        checkpoint.verify_identity(meta, self.identity())
        step = checkpoint.verify_step(meta, self.total_steps)
        checkpoint.require(tensors, "latents", "rng")
        if tensors["latents"].shape != self.latents.shape:
            raise CorruptCheckpoint("checkpoint latents have the wrong shape")
        self.latents = np.array(tensors["latents"])
        self.rng = np.array(tensors["rng"])
        checkpoint.restore_scheduler(self.scheduler, meta.get("scheduler_state"), tensors)
        self.step_index = step

    def decode(self) -> Video:
        req = self.req
        frames = np.empty((req.frames, req.height, req.width, 3), dtype=np.uint8)
        for i in range(req.frames):
            frames[i].fill((req.seed + 31 * self.step_index + i) % 256)
        audio = None
        spec = self.noop.index.get("audio")
        if isinstance(spec, dict):
            rate = int(spec.get("sample_rate", 16000))
            channels = int(spec.get("channels", 1))
            samples = round(req.frames / req.fps * rate)
            pcm = np.full((samples, channels), (req.seed % 256) / 255.0, dtype=np.float32)
            audio = Audio(sample_rate=rate, channels=channels, pcm=pcm)
        return Video(frames=frames, fps=req.fps, audio=audio)


class NoopModel(LoadedModel):
    adapter = "noop"

    def __init__(self, spec: ModelSpec, weights_hash: str, index: dict[str, Any]) -> None:
        audio = isinstance(index.get("audio"), dict)
        super().__init__(
            spec,
            weights_hash,
            Supports(image_to_video=True, audio=audio, negative_prompt=True, guidance_scale=True),
        )
        self.index = index

    def validate(self, req: Request) -> None:
        check_multiple(req.width, 8, "width")
        check_multiple(req.height, 8, "height")
        if req.width * req.height * req.frames * 3 > 8 << 30:
            raise InvalidRequest("the noop model decodes at most 8 GiB of frames", "frames")

    def start(self, req: Request) -> Generation:
        self.validate(req)
        return NoopGeneration(self, req)

    def resume(self, req: Request, data: bytes | bytearray | memoryview) -> Generation:
        self.validate(req)
        meta, tensors = checkpoint.decode(data, "numpy")
        gen = NoopGeneration(self, with_image_digest(req, meta.get("image_sha256")))
        gen.restore(meta, tensors)
        return gen


def load(spec: ModelSpec, device: str) -> NoopModel:
    t0 = time.monotonic()
    try:
        digest, _ = weights.weights_hash(spec.path)
    except OSError as e:
        raise LoadFailed(f"cannot read model dir {spec.path!r}: {e}") from e
    index = read_model_index(spec.path)
    if index.get("_class_name") != CLASS_NAME:
        raise LoadFailed(f"{spec.path}: model_index.json names {index.get('_class_name')}, not {CLASS_NAME}")
    from safetensors.numpy import load_file

    files = sorted(Path(spec.path).rglob("*.safetensors"))
    if not files:
        raise LoadFailed(f"{spec.path} holds no *.safetensors weights")
    size = 0
    for f in files:
        try:
            size += sum(a.nbytes for a in load_file(str(f)).values())
        except Exception as e:
            raise LoadFailed(f"cannot read weights {f}: {type(e).__name__}: {e}") from e
    model = NoopModel(spec, digest, index)
    model.memory_bytes = size
    model.load_seconds = time.monotonic() - t0
    return model
