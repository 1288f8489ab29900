"""Shared fixtures: tiny models (built once per session) and the environment every spawned host inherits."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Hosts spawned by the tests inherit these; the in-process pipeline references use the same thread count.
os.environ.setdefault("VIDEOGEN_HOST_THREADS", "2")
os.environ.setdefault("VIDEOGEN_HOST_LOG", "WARNING")
os.environ["VIDEOGEN_HOST_CACHE_DIR"] = tempfile.mkdtemp(prefix="vgh-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny(tiny_root: Path) -> Callable[..., Path]:
    """``tiny(variant, seed=0, scheduler="default", audio=False)`` -> model dir (built once per arguments)."""
    from videogen_host import testing

    cache: dict[tuple[str, int, str, bool], Path] = {}

    def make(variant: str, seed: int = 0, scheduler: str = "default", audio: bool = False) -> Path:
        key = (variant, seed, scheduler, audio)
        if key not in cache:
            out = tiny_root / f"{variant}-s{seed}-{scheduler}{'-audio' if audio else ''}"
            testing.make_tiny(variant, out, seed=seed, audio=audio, scheduler=scheduler)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture
def host() -> Iterator[object]:
    from videogen_host.client import HostClient

    h = HostClient()
    try:
        yield h
    finally:
        h.close()
