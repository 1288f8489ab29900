"""The ``request`` of ``start`` / ``resume``: parsing, generic validation and the request hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from .errors import InvalidRequest

MAX_SEED = (1 << 64) - 1
MAX_SIDE = 16384
MAX_FRAMES = 10000
MAX_STEPS = 10000


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    data: bytes | None  # width * height * 3 RGB bytes, row-major; None on resume (the pixels are not sent)
    sha256: str | None  # hex SHA-256 of the RGB bytes; on resume taken from the header or the checkpoint

    def to_pil(self) -> Any:
        from PIL import Image as PILImage

        if self.data is None:
            raise RuntimeError("the image's pixels are not available (a resume carries none)")
        return PILImage.frombytes("RGB", (self.width, self.height), self.data)


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str | None
    seed: int
    width: int
    height: int
    frames: int
    fps: int
    steps: int
    guidance_scale: float | None
    image: Image | None
    raw: dict[str, Any]


def _int(raw: dict[str, Any], key: str, lo: int, hi: int, *, required: bool = True, default: int = 0) -> int:
    v = raw.get(key)
    if v is None:
        if required:
            raise InvalidRequest(f"`{key}` is required", key)
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise InvalidRequest(f"`{key}` must be an integer, got {v!r}", key)
    if not lo <= v <= hi:
        raise InvalidRequest(f"`{key}` must be in {lo}..={hi}, got {v}", key)
    return v


def _hex_digest(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise InvalidRequest("`image.sha256` must be 64 lower-case hex digits", "image")
    return v


def parse_request(raw: Any, payload: bytes | bytearray | memoryview | None, *, resume: bool = False) -> Request:
    """Generic checks (types, ranges, image bytes); adapters add the pipeline's own constraints.

    On ``start`` the payload is the image's RGB bytes; on ``resume`` (``resume=True``) no pixels travel and the
    image's digest is ``image.sha256`` when the header has it, else the one recorded in the checkpoint.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("`request` must be a JSON object", "request")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("`prompt` must be a string", "prompt")
    neg = raw.get("negative_prompt")
    if neg is not None and not isinstance(neg, str):
        raise InvalidRequest("`negative_prompt` must be a string or null", "negative_prompt")
    seed = _int(raw, "seed", 0, MAX_SEED)
    width = _int(raw, "width", 1, MAX_SIDE)
    height = _int(raw, "height", 1, MAX_SIDE)
    frames = _int(raw, "frames", 1, MAX_FRAMES)
    fps = _int(raw, "fps", 1, 1000, required=False, default=16)
    steps = _int(raw, "steps", 1, MAX_STEPS)
    gs = raw.get("guidance_scale")
    if gs is not None:
        if isinstance(gs, bool) or not isinstance(gs, (int, float)) or not (0.0 <= float(gs) <= 1000.0):
            raise InvalidRequest("`guidance_scale` must be a number in 0..=1000 or null", "guidance_scale")
        gs = float(gs)
    image = None
    img = raw.get("image")
    if img is not None:
        if not isinstance(img, dict):
            raise InvalidRequest('`image` must be {"width": W, "height": H} or null', "image")
        w = _int(img, "width", 1, MAX_SIDE)
        h = _int(img, "height", 1, MAX_SIDE)
        digest = _hex_digest(img.get("sha256"))
        if resume:
            image = Image(w, h, None, digest)
        else:
            data = bytes(payload or b"")
            if len(data) != w * h * 3:
                raise InvalidRequest(f"image {w}x{h} needs {w * h * 3} RGB payload bytes, got {len(data)}", "image")
            actual = hashlib.sha256(data).hexdigest()
            if digest is not None and digest != actual:
                raise InvalidRequest("`image.sha256` does not match the image bytes", "image")
            image = Image(w, h, data, actual)
    return Request(
        prompt=prompt,
        negative_prompt=neg,
        seed=seed,
        width=width,
        height=height,
        frames=frames,
        fps=fps,
        steps=steps,
        guidance_scale=gs,
        image=image,
        raw=raw,
    )


def with_image_digest(req: Request, digest: Any) -> Request:
    """``req`` whose image (present, its digest unknown: a resume) takes ``digest`` (from the checkpoint)."""
    if req.image is None or req.image.sha256 is not None or not isinstance(digest, str):
        return req
    return replace(req, image=replace(req.image, sha256=digest))


def canonical_request(raw: dict[str, Any], image: Image | None) -> bytes:
    """Canonical JSON: keys sorted, no whitespace, UTF-8; a present ``image`` becomes
    ``{"height": H, "sha256": hex SHA-256 of its RGB bytes, "width": W}``."""
    obj = dict(raw)
    if image is not None:
        obj["image"] = {"width": image.width, "height": image.height, "sha256": image.sha256}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def request_hash(req: Request, adapter: str) -> str:
    """``"sha256:" + hex(SHA-256(adapter UTF-8 || 0x00 || canonical JSON of the request))``."""
    h = hashlib.sha256()
    h.update(adapter.encode("utf-8"))
    h.update(b"\0")
    h.update(canonical_request(req.raw, req.image))
    return "sha256:" + h.hexdigest()
