"""Process-wide settings: environment before any Hugging Face import, torch determinism on first use."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

_torch_ready = False


def device_kind() -> str:
    """``cpu`` (default) or ``cuda``, from ``VIDEOGEN_HOST_DEVICE``."""
    kind = os.environ.get("VIDEOGEN_HOST_DEVICE", "cpu").strip().lower() or "cpu"
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"VIDEOGEN_HOST_DEVICE must be cpu or cuda, got {kind!r}")
    return kind


def device_name() -> str:
    return "cuda:0" if device_kind() == "cuda" else "cpu"


def set_environment() -> None:
    """Must run before torch / huggingface_hub / diffusers are imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["DIFFUSERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device_kind() == "cuda":
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def thread_count() -> int | None:
    raw = os.environ.get("VIDEOGEN_HOST_THREADS", "").strip()
    if not raw:
        return None
    n = int(raw)
    if n < 1:
        raise ValueError(f"VIDEOGEN_HOST_THREADS must be >= 1, got {raw!r}")
    return n


def setup_torch() -> Any:
    """Imports torch once and applies the determinism settings of docs/MODEL_HOST.md; returns the module."""
    global _torch_ready
    import torch

    if _torch_ready:
        return torch
    set_environment()
    n = thread_count()
    if n is not None:
        torch.set_num_threads(n)
    cuda = device_kind() == "cuda"
    # CPU: fully deterministic. CUDA: deterministic where torch has an implementation, a warning elsewhere (a
    # generation must not fail because one kernel lacks a deterministic variant).
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    _disable_tf32(torch)
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("VIDEOGEN_HOST_DEVICE=cuda but torch sees no CUDA device")
    _torch_ready = True
    log.info(
        "torch %s ready: device=%s threads=%d deterministic=%s",
        torch.__version__,
        device_name(),
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
    )
    return torch


def _disable_tf32(torch: Any) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            torch.backends.cudnn.fp32_precision = "ieee"
        except (AttributeError, RuntimeError, ValueError):
            pass
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        except (AttributeError, RuntimeError):
            pass
        torch.set_float32_matmul_precision("highest")


def torch_loaded() -> bool:
    return "torch" in sys.modules


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    # CUDA / cuBLAS / cuDNN allocation failures that torch raises as plain RuntimeError
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def memory() -> tuple[int, int]:
    """(allocated, total) bytes: the CUDA allocator and device on a GPU host, RSS and RAM on a CPU host."""
    torch = sys.modules.get("torch")
    if device_kind() == "cuda" and torch is not None and torch.cuda.is_available():
        _, total = torch.cuda.mem_get_info()
        return int(torch.cuda.memory_allocated()), int(total)
    rss = 0
    total = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return rss, total


def free_device_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and device_kind() == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
