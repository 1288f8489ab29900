"""Error replies of the diffusers adapters, through a real host process."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from videogen_host import testing
from videogen_host.client import HostClient, ReplyError


@pytest.fixture(scope="module")
def h(tiny: Callable[..., Path]) -> Iterator[HostClient]:
    with HostClient() as host:
        host.load("wan", "wan", str(tiny("wan")))
        yield host


def _err(fn: Callable[[], object]) -> ReplyError:
    with pytest.raises(ReplyError) as e:
        fn()
    return e.value


WAN = testing.example_request("wan")


@pytest.fixture(scope="module")
def wan_ckpt(h: HostClient) -> bytes:
    h.start("wan", WAN)
    h.step()
    return h.checkpoint()


def test_load_reply(h: HostClient, tiny: Callable[..., Path]) -> None:
    r = h.load("wan", "wan", str(tiny("wan")))
    assert r["supports"] == {
        "image_to_video": False,
        "audio": False,
        "negative_prompt": True,
        "guidance_scale": True,
        "text_to_video": True,
    }
    assert r["memory_bytes"] > 0 and r["load_seconds"] >= 0
    e = _err(lambda: h.load("wan", "wan", str(tiny("wan")), "bfloat16"))
    assert (e.code, e.param) == ("invalid_request", "id")


def test_load_failures(h: HostClient, tiny: Callable[..., Path], tmp_path: Path) -> None:
    e = _err(lambda: h.load("x", "wan", str(tmp_path / "nope")))
    assert e.code == "load_failed" and not e.retryable
    broken = tmp_path / "broken"
    shutil.copytree(tiny("wan"), broken)
    w = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    e = _err(lambda: h.load("x", "wan", str(broken)))
    assert e.code == "load_failed"
    assert "from_pretrained" in e.error["message"]
    e = _err(lambda: h.load("x", "ltx", str(tiny("wan"))))  # model_index.json names WanPipeline
    assert e.code == "load_failed"
    e = _err(lambda: h.load("x", "wan", str(tiny("wan")), "float64"))
    assert (e.code, e.param) == ("invalid_request", "model.dtype")
    assert sorted(h.health()["loaded"]) == ["wan"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"frames": 8}, "frames"),
        ({"frames": 10}, "frames"),
        ({"width": 40}, "width"),
        ({"height": 24}, "height"),
        ({"steps": 0}, "steps"),
        ({"image": {"width": 2, "height": 2}}, "image"),
    ],
)
def test_invalid_requests(h: HostClient, change: dict, param: str) -> None:
    payload = b"\0" * 12 if "image" in change else b""
    e = _err(lambda: h.start("wan", {**WAN, **change}, payload))
    assert (e.code, e.param) == ("invalid_request", param)


def test_i2v_needs_an_image_and_hunyuan_has_no_negative_prompt(h: HostClient, tiny: Callable[..., Path]) -> None:
    r = h.load("wan-i2v", "wan", str(tiny("wan-i2v")))
    assert r["supports"]["image_to_video"] is True and r["supports"]["text_to_video"] is False
    e = _err(lambda: h.start("wan-i2v", WAN))
    assert (e.code, e.param) == ("invalid_request", "image")
    r = h.load("hy", "hunyuan", str(tiny("hunyuan")))
    assert r["supports"]["negative_prompt"] is False
    req = testing.example_request("hunyuan")
    e = _err(lambda: h.start("hy", {**req, "negative_prompt": "blurry"}))
    assert (e.code, e.param) == ("invalid_request", "negative_prompt")
    h.unload("wan-i2v")
    h.unload("hy")


def test_checkpoint_of_other_weights(h: HostClient, tiny: Callable[..., Path], wan_ckpt: bytes) -> None:
    h.load("wan-b", "wan", str(tiny("wan", seed=1)))
    e = _err(lambda: h.resume("wan-b", WAN, wan_ckpt))
    assert (e.code, e.param) == ("checkpoint_mismatch", "weights_hash")
    assert "weights_hash" in e.error["message"] and not e.retryable
    h.unload("wan-b")


def test_corrupted_byte(h: HostClient, wan_ckpt: bytes) -> None:
    for where in (3, 20, len(wan_ckpt) // 2, len(wan_ckpt) - 2):
        bad = bytearray(wan_ckpt)
        bad[where] ^= 0x10
        e = _err(lambda b=bytes(bad): h.resume("wan", WAN, b))
        assert e.code == "corrupt_checkpoint"
    assert _err(lambda: h.resume("wan", WAN, b"")).code == "corrupt_checkpoint"


def test_other_request(h: HostClient, wan_ckpt: bytes) -> None:
    for change in ({"seed": 43}, {"prompt": "a blue fox"}, {"guidance_scale": 4.0}):
        e = _err(lambda c=change: h.resume("wan", {**WAN, **c}, wan_ckpt))
        assert (e.code, e.param) == ("checkpoint_mismatch", "request_hash")
    e = _err(lambda: h.resume("wan", {**WAN, "steps": 5}, wan_ckpt))
    assert (e.code, e.param) == ("checkpoint_mismatch", "request_hash")


def test_other_adapter(h: HostClient, tiny: Callable[..., Path], wan_ckpt: bytes) -> None:
    h.load("n", "noop", str(tiny("noop")))
    req = {**WAN, "width": 32}
    h.start("n", req)
    noop_ckpt = h.checkpoint()
    e = _err(lambda: h.resume("wan", req, noop_ckpt))
    assert (e.code, e.param) == ("checkpoint_mismatch", "adapter")
    e = _err(lambda: h.resume("n", WAN, wan_ckpt))
    assert (e.code, e.param) == ("checkpoint_mismatch", "adapter")
    h.unload("n")


def test_other_dtype(h: HostClient, tiny: Callable[..., Path], wan_ckpt: bytes) -> None:
    h.load("wan16", "wan", str(tiny("wan")), "bfloat16")
    e = _err(lambda: h.resume("wan16", WAN, wan_ckpt))
    assert (e.code, e.param) == ("checkpoint_mismatch", "dtype")
    h.unload("wan16")


def test_sound_resume_still_works(h: HostClient, wan_ckpt: bytes) -> None:
    assert h.resume("wan", WAN, wan_ckpt)["step"] == 1
    assert h.step()["step"] == 2
