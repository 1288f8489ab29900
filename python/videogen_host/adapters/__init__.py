"""Adapter registry: adapter name -> module with ``load(spec, device) -> LoadedModel`` (imported on first use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import LoadedModel, ModelSpec

ADAPTERS: dict[str, str] = {
    "wan": "videogen_host.adapters.wan",
    "ltx": "videogen_host.adapters.ltx",
    "cogvideox": "videogen_host.adapters.cogvideox",
    "hunyuan": "videogen_host.adapters.hunyuan",
    "noop": "videogen_host.adapters.noop",
}


def names() -> list[str]:
    return list(ADAPTERS)


def load(spec: ModelSpec, device: str) -> LoadedModel:
    module = importlib.import_module(ADAPTERS[spec.adapter])
    model: LoadedModel = module.load(spec, device)
    return model
