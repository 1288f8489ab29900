"""Shared machinery of the diffusers adapters.

A generation re-implements its pipeline's ``__call__`` in three parts, calling the pipeline's own methods wherever the
pipeline has one (``encode_prompt``, ``prepare_latents``, ``video_processor``, ...):

- :meth:`DiffusersGeneration.prepare`: everything before the denoising loop. With ``fresh=False`` (resume) it skips
  what the checkpoint restores (prompt encoding, latents, anything drawing from the generator) and recomputes only the
  cheap deterministic loop constants (timesteps, rotary embeddings, guidance tensors).
- :meth:`DiffusersGeneration.denoise`: one iteration of the pipeline's loop body, classifier-free guidance included.
- :meth:`DiffusersGeneration.decode_video`: the pipeline's post-loop code up to ``postprocess_video(output_type="np")``.
"""

from __future__ import annotations

import abc
import copy
import logging
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .. import checkpoint, runtime, weights
from ..errors import CorruptCheckpoint, HostError, InvalidRequest, LoadFailed
from ..request import Request, with_image_digest
from .base import DTYPE_NAMES, Generation, LoadedModel, ModelSpec, Supports, Video, read_model_index

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def torch_dtype(name: str, param: str = "model.dtype") -> torch.dtype:
    import torch

    canon = DTYPE_NAMES.get(str(name).lower())
    if canon is None:
        raise InvalidRequest(f"unknown dtype {name!r} (float32, bfloat16 or float16)", param)
    return getattr(torch, canon)


def resolve_dtype(spec: ModelSpec, device: str) -> torch.dtype | dict[str, torch.dtype]:
    """``model.dtype``: a name, or ``{"default": name, "<component>": name}``; unset: float32 on CPU, bf16 on CUDA."""
    import torch

    if spec.dtype is None or spec.dtype == "":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if isinstance(spec.dtype, dict):
        out = {k: torch_dtype(v) for k, v in spec.dtype.items()}
        out.setdefault("default", torch.float32 if device == "cpu" else torch.bfloat16)
        return out
    return torch_dtype(spec.dtype)


@contextmanager
def _fp32_modules_without_accelerate(classes: list[type]) -> Iterator[list[type]]:
    """diffusers refuses to load a model with ``_keep_in_fp32_modules`` (Wan) unless ``accelerate`` is installed.

    Without accelerate, hide the attribute during ``from_pretrained`` and afterwards re-read the kept modules'
    parameters from the checkpoint in float32 (what diffusers' low-memory loader does); a no-op for float32 loads.
    """
    missing = object()
    saved: list[tuple[type, Any]] = []
    try:
        for cls in classes:
            saved.append((cls, vars(cls).get("_keep_in_fp32_modules", missing)))
            cls._keep_in_fp32_modules = None  # type: ignore[attr-defined]
        yield [c for c, _ in saved]
    finally:
        for cls, value in saved:
            if value is missing:
                delattr(cls, "_keep_in_fp32_modules")
            else:
                cls._keep_in_fp32_modules = value  # type: ignore[attr-defined]


def _refill_fp32(module: Any, keep: list[str], component_dir: Path) -> None:
    import torch
    from safetensors import safe_open

    wanted = {
        name: t
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if torch.is_floating_point(t) and any(m in name.split(".") for m in keep)
    }
    if not wanted or all(t.dtype == torch.float32 for t in wanted.values()):
        return
    # the non-variant weights (single file or shards), as from_pretrained reads them by default
    files = [f for f in sorted(component_dir.glob("*.safetensors")) if re.fullmatch(r"[^.]+\.safetensors", f.name)]
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = wanted.get(key)
                if t is not None:
                    t.data = f.get_tensor(key).to(device=t.device, dtype=torch.float32)
    for name, t in wanted.items():
        if t.dtype != torch.float32:
            t.data = t.data.to(torch.float32)
            log.warning("%s: %s kept in float32 from the %s copy (not in the checkpoint)", component_dir, name, t.dtype)


def load_pipeline(cls: type, path: str, dtype: Any) -> Any:
    """``cls.from_pretrained(path, torch_dtype=dtype)``, as in production."""
    import diffusers
    from diffusers.utils import is_accelerate_available

    if is_accelerate_available():
        return cls.from_pretrained(path, torch_dtype=dtype)
    index = read_model_index(path)
    classes = []
    for name, value in index.items():
        if isinstance(value, list) and len(value) == 2 and value[0] == "diffusers":
            comp = getattr(diffusers, str(value[1]), None)
            if isinstance(comp, type) and getattr(comp, "_keep_in_fp32_modules", None):
                classes.append((name, comp))
    with _fp32_modules_without_accelerate([c for _, c in classes]):
        pipe = cls.from_pretrained(path, torch_dtype=dtype)
    for name, comp in classes:
        module = getattr(pipe, name, None)
        keep = comp._keep_in_fp32_modules
        if module is not None and keep:
            _refill_fp32(module, list(keep), Path(path) / name)
    return pipe


def module_bytes(pipe: Any) -> int:
    import torch

    total = 0
    seen: set[int] = set()
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            for t in [*comp.parameters(), *comp.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


class DiffusersModel(LoadedModel):
    """A loaded diffusers pipeline. Subclasses set ``adapter``, ``pipeline_classes`` and ``generation_cls``."""

    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    generation_cls: ClassVar[type[DiffusersGeneration]]

    def __init__(self, spec: ModelSpec, weights_hash: str, pipe: Any, device: str) -> None:
        super().__init__(spec, weights_hash, self.compute_supports(pipe))
        self.pipe = pipe
        self.device = device
        self.device_kind = device
        self.pipeline_class = type(pipe).__name__
        self._scheduler0 = copy.deepcopy(pipe.scheduler)

    @classmethod
    def load(cls, spec: ModelSpec, device: str) -> DiffusersModel:
        runtime.setup_torch()
        t0 = time.monotonic()
        dtype = resolve_dtype(spec, device)
        try:
            digest, cached = weights.weights_hash(spec.path)
        except OSError as e:
            raise LoadFailed(f"cannot read model dir {spec.path!r}: {e}") from e
        index = read_model_index(spec.path)
        class_name = index["_class_name"]
        if class_name not in cls.pipeline_classes:
            raise LoadFailed(
                f"{spec.path}: model_index.json names {class_name}; adapter {cls.adapter!r} runs "
                f"{', '.join(cls.pipeline_classes)}"
            )
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()  # tqdm on stderr is noise in the worker's log
        transformers.utils.logging.disable_progress_bar()
        pipe_cls = getattr(diffusers, class_name)
        try:
            pipe = load_pipeline(pipe_cls, spec.path, dtype)
            pipe.to(device)
        except HostError:
            raise
        except Exception as e:
            if runtime.is_oom(e):
                raise
            raise LoadFailed(f"{class_name}.from_pretrained({spec.path!r}) failed: {type(e).__name__}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        model = cls(spec, digest, pipe, device)
        model.memory_bytes = module_bytes(pipe)
        model.load_seconds = time.monotonic() - t0
        log.info(
            "loaded %s (%s) from %s in %.2fs, weights %s%s, %d bytes on %s",
            spec.id,
            class_name,
            spec.path,
            model.load_seconds,
            digest,
            " (cached hash)" if cached else "",
            model.memory_bytes,
            device,
        )
        return model

    @classmethod
    def compute_supports(cls, pipe: Any) -> Supports:
        raise NotImplementedError

    def pipe_for(self, req: Request) -> Any:
        """The pipeline object that runs ``req`` (with a fresh copy of the pristine scheduler)."""
        self.pipe.scheduler = copy.deepcopy(self._scheduler0)
        return self.pipe

    def validate(self, req: Request) -> None:
        from .base import check_supported

        check_supported(req, self.supports)

    def start(self, req: Request) -> Generation:
        self.validate(req)
        gen = self.generation_cls(self, req)
        gen.begin_fresh()
        return gen

    def resume(self, req: Request, data: bytes | bytearray | memoryview) -> Generation:
        self.validate(req)
        meta, tensors = checkpoint.decode(data, "torch")
        gen = self.generation_cls(self, with_image_digest(req, meta.get("image_sha256")))
        gen.begin_resume(meta, tensors)
        return gen

    def unload(self) -> None:
        self.pipe = None
        self._scheduler0 = None
        runtime.free_device_memory()


class DiffusersGeneration(Generation):
    """Loop state of one generation: latents, generator, stored conditioning tensors, the scheduler's state."""

    default_guidance: ClassVar[float] = 5.0

    def __init__(self, model: DiffusersModel, req: Request) -> None:
        import torch

        super().__init__(model, req)
        self.dmodel = model
        self.pipe = model.pipe_for(req)
        self.device = model.device
        self.generator = torch.Generator(device=self.device).manual_seed(req.seed)
        self.latents: torch.Tensor | None = None
        self.cond: dict[str, torch.Tensor | None] = {}
        self.timesteps: torch.Tensor | None = None
        self.guidance_scale = req.guidance_scale if req.guidance_scale is not None else self.default_guidance

    # -- adapter hooks ---------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def prepare(self, fresh: bool) -> None:
        """Everything before the loop; sets ``self.timesteps`` (and, when ``fresh``, ``latents`` and ``cond``)."""

    @abc.abstractmethod
    def denoise(self, i: int, t: torch.Tensor) -> None:
        """One loop iteration: updates ``self.latents`` (and scheduler state)."""

    @abc.abstractmethod
    def decode_video(self, generator: torch.Generator) -> np.ndarray:
        """The post-loop code: float video in [0, 1], shape (batch, frames, height, width, 3)."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able loop state beyond tensors (restored by :meth:`restore_extra`)."""
        return {}

    def restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def begin_fresh(self) -> None:
        import torch

        # Schedulers that draw noise without the pipeline's generator (stochastic FlowMatch, SDE solvers) use the
        # global RNG: seed it too, and checkpoint it, so that a resume continues it bit-exactly.
        torch.manual_seed(self.req.seed)
        with torch.no_grad():
            self.prepare(True)
        assert self.timesteps is not None and self.latents is not None
        self.total_steps = len(self.timesteps)

    def begin_resume(self, meta: dict[str, Any], tensors: dict[str, Any]) -> None:
        import torch

        ident = self.identity()
        checkpoint.verify_identity(meta, ident)
        extra = meta.get("extra")
        if not isinstance(extra, dict) or not isinstance(extra.get("cond"), dict):
            raise CorruptCheckpoint("checkpoint lacks its conditioning manifest")
        checkpoint.require(tensors, "latents", "rng")
        cond: dict[str, torch.Tensor | None] = {}
        for name, present in extra["cond"].items():
            if present:
                checkpoint.require(tensors, name)
                cond[name] = tensors[name].to(self.device)
            else:
                cond[name] = None
        self.cond = cond
        self.latents = tensors["latents"].to(self.device)
        with torch.no_grad():
            self.prepare(False)
        assert self.timesteps is not None
        self.total_steps = len(self.timesteps)
        step = checkpoint.verify_step(meta, self.total_steps)
        checkpoint.restore_scheduler(self.pipe.scheduler, meta.get("scheduler_state"), tensors, self.device)
        checkpoint.restore_generator(self.generator, tensors["rng"])
        if "rng_global" in tensors:
            checkpoint.restore_global_rng(tensors["rng_global"], tensors.get("rng_global_cuda"))
        self.restore_extra(extra.get("loop") or {})
        self.step_index = step

    def step(self) -> None:
        import torch

        if self.done:
            return
        assert self.timesteps is not None
        i = self.step_index
        t = self.timesteps[i]
        with torch.no_grad():
            self.denoise(i, t)
        self.step_index = i + 1

    def preview(self) -> dict[str, float]:
        assert self.latents is not None
        x = self.latents.detach().float()
        mean = float(x.mean())
        std = float(x.std()) if x.numel() > 1 else 0.0
        return {"mean": mean if math.isfinite(mean) else 0.0, "std": std if math.isfinite(std) else 0.0}

    def checkpoint(self) -> bytes:
        assert self.latents is not None
        cap = checkpoint.capture_scheduler(self.pipe.scheduler)
        tensors: dict[str, Any] = {
            "latents": self.latents,
            "rng": checkpoint.generator_state(self.generator),
            **checkpoint.global_rng_state(self.device),
        }
        for name, t in self.cond.items():
            if name in tensors or name.startswith(checkpoint.SCHEDULER_PREFIX):
                raise AssertionError(f"conditioning tensor name {name!r} collides")
            if t is not None:
                tensors[name] = t
        tensors.update(cap.tensors)
        extra = {"cond": {name: t is not None for name, t in self.cond.items()}, "loop": self.extra_state()}
        meta = checkpoint.make_meta(self.identity(), self.step_index, cap.state, extra, self.image_sha256)
        return checkpoint.encode(meta, tensors)

    def decode(self) -> Video:
        import torch

        with torch.no_grad():
            video = self.decode_video(checkpoint.clone_generator(self.generator))
        video = np.asarray(video)
        frames = (video[0] * 255).round().astype(np.uint8)
        return Video(frames=np.ascontiguousarray(frames), fps=self.req.fps)

    def close(self) -> None:
        self.latents = None
        self.cond = {}


def invalid_from_value_error(e: ValueError) -> InvalidRequest:
    return InvalidRequest(f"the pipeline rejects the request: {e}")
