"""The weights hash: a model's version (docs/MODEL_HOST.md, ``load``).

``weights_hash = "sha256:" + hex(SHA-256(for each regular file under the model dir, in byte order of its relative
POSIX path: path UTF-8 || 0x00 || size as u64 LE || contents))``. Symlinked files count as the file they point to
(Hugging Face cache snapshots are symlinks); hidden entries (a name starting with ``.``) are skipped.

The result is cached in a sidecar JSON file under the cache dir (``VIDEOGEN_HOST_CACHE_DIR``, default
``$XDG_CACHE_HOME/videogen_host`` or ``~/.cache/videogen_host``) keyed by every file's (path, size, mtime_ns), so a
second load of an unchanged model dir reads no weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 8 << 20
_SIDECAR_VERSION = 1


def cache_dir() -> Path:
    env = os.environ.get("VIDEOGEN_HOST_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "videogen_host"


def list_files(model_dir: Path) -> list[tuple[str, Path, os.stat_result]]:
    """(relative POSIX path, absolute path, stat) of every regular file, sorted by the path's UTF-8 bytes."""
    out: list[tuple[str, Path, os.stat_result]] = []
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            p = Path(root) / name
            st = p.stat()  # follows symlinks
            if not _is_regular(st):
                continue
            rel = p.relative_to(model_dir).as_posix()
            out.append((rel, p, st))
    out.sort(key=lambda e: e[0].encode("utf-8"))
    return out


def _is_regular(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


def _fingerprint(files: list[tuple[str, Path, os.stat_result]]) -> list[list[Any]]:
    return [[rel, st.st_size, st.st_mtime_ns] for rel, _, st in files]


def _sidecar(model_dir: Path) -> Path:
    key = hashlib.sha256(str(model_dir).encode("utf-8")).hexdigest()[:32]
    return cache_dir() / f"weights-{key}.json"


def compute_hash(files: list[tuple[str, Path, os.stat_result]]) -> str:
    h = hashlib.sha256()
    for rel, path, _ in files:
        size = path.stat().st_size
        h.update(rel.encode("utf-8"))
        h.update(b"\0")
        h.update(struct.pack("<Q", size))
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
        if n != size:
            raise OSError(f"{path} changed size while being hashed ({size} -> {n})")
    return "sha256:" + h.hexdigest()


def weights_hash(model_dir: str | os.PathLike[str], *, use_cache: bool = True) -> tuple[str, bool]:
    """Returns (hash, whether it came from the sidecar cache). Raises OSError for a missing / unreadable dir."""
    root = Path(model_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"model path {str(model_dir)!r} is not a directory")
    files = list_files(root)
    if not files:
        raise FileNotFoundError(f"model path {str(model_dir)!r} holds no files")
    fp = _fingerprint(files)
    sidecar = _sidecar(root)
    if use_cache:
        try:
            cached = json.loads(sidecar.read_text("utf-8"))
            if (
                cached.get("version") == _SIDECAR_VERSION
                and cached.get("path") == str(root)
                and cached.get("files") == fp
                and isinstance(cached.get("hash"), str)
            ):
                return cached["hash"], True
        except (OSError, ValueError, AttributeError):
            pass
    digest = compute_hash(files)
    if use_cache:
        try:
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            tmp = sidecar.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps({"version": _SIDECAR_VERSION, "path": str(root), "files": fp, "hash": digest}), "utf-8"
            )
            os.replace(tmp, sidecar)
        except OSError as e:
            log.warning("cannot write the weights-hash cache %s: %s", sidecar, e)
    return digest, False
