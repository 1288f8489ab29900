"""The weights hash (definition, cache) and the request hash."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from videogen_host import weights
from videogen_host.errors import InvalidRequest
from videogen_host.request import canonical_request, parse_request, request_hash


def _model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    (d / "transformer").mkdir(parents=True)
    (d / "model_index.json").write_text('{"_class_name": "X"}')
    (d / "transformer" / "w.safetensors").write_bytes(b"\x01\x02\x03" * 1000)
    (d / "transformer" / "config.json").write_text("{}")
    (d / ".hidden").write_text("ignored")
    return d


def _expected(d: Path) -> str:
    h = hashlib.sha256()
    for rel in ["model_index.json", "transformer/config.json", "transformer/w.safetensors"]:
        data = (d / rel).read_bytes()
        h.update(rel.encode() + b"\0" + struct.pack("<Q", len(data)) + data)
    return "sha256:" + h.hexdigest()


def test_hash_definition(tmp_path: Path) -> None:
    d = _model(tmp_path)
    digest, cached = weights.weights_hash(d)
    assert digest == _expected(d)
    assert not cached


def test_second_hash_comes_from_the_sidecar_without_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _model(tmp_path)
    first, _ = weights.weights_hash(d)

    def boom(*a: object, **k: object) -> str:
        raise AssertionError("re-read the weights")

    monkeypatch.setattr(weights, "compute_hash", boom)
    again, cached = weights.weights_hash(d)
    assert cached and again == first
    sidecars = list(Path(os.environ["VIDEOGEN_HOST_CACHE_DIR"]).glob("weights-*.json"))
    assert sidecars


def test_changed_file_is_rehashed(tmp_path: Path) -> None:
    d = _model(tmp_path)
    first, _ = weights.weights_hash(d)
    f = d / "transformer" / "w.safetensors"
    f.write_bytes(b"\x01\x02\x04" * 1000)  # same size; new mtime
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second, cached = weights.weights_hash(d)
    assert not cached and second != first and second == _expected(d)


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        weights.weights_hash(tmp_path / "nope")


REQ = {
    "prompt": "a red fox",
    "negative_prompt": None,
    "seed": 42,
    "width": 32,
    "height": 32,
    "frames": 9,
    "fps": 16,
    "steps": 4,
    "guidance_scale": 5.0,
    "image": None,
}


def test_request_hash_canonical() -> None:
    r = parse_request(REQ, None)
    canon = canonical_request(REQ, None)
    assert canon.startswith(b'{"fps":16,"frames":9,"guidance_scale":5.0,"height":32,"image":null')
    want = "sha256:" + hashlib.sha256(b"wan\0" + canon).hexdigest()
    assert request_hash(r, "wan") == want
    assert request_hash(parse_request(dict(reversed(list(REQ.items()))), None), "wan") == want
    assert request_hash(r, "ltx") != want
    assert request_hash(parse_request({**REQ, "seed": 43}, None), "wan") != want


def test_request_hash_covers_image_bytes() -> None:
    img = {"width": 2, "height": 1}
    a = parse_request({**REQ, "image": img}, b"\x00" * 6)
    b = parse_request({**REQ, "image": img}, b"\x00" * 5 + b"\x01")
    assert request_hash(a, "wan") != request_hash(b, "wan")
    canon = canonical_request(a.raw, a.image)
    assert hashlib.sha256(b"\x00" * 6).hexdigest().encode() in canon


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"steps": 0}, "steps"),
        ({"width": 0}, "width"),
        ({"height": "32"}, "height"),
        ({"frames": -1}, "frames"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"prompt": None}, "prompt"),
        ({"negative_prompt": 3}, "negative_prompt"),
        ({"guidance_scale": "x"}, "guidance_scale"),
        ({"image": {"width": 2, "height": 2}}, "image"),
        ({"image": [1]}, "image"),
    ],
)
def test_request_validation(change: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_request({**REQ, **change}, b"\0" * 3)
    assert e.value.param == param
