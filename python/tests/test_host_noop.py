"""The real entry point (``python -m videogen_host --connect``) with the torch-free ``noop`` adapter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from videogen_host import testing
from videogen_host.client import HostClient, ReplyError
from videogen_host.protocol import encode_frame, read_frame

REQ = testing.example_request("noop")


def _err(fn: Callable[[], object]) -> ReplyError:
    with pytest.raises(ReplyError) as e:
        fn()
    return e.value


def test_hello(host: HostClient) -> None:
    assert host.hello["op"] == "hello"
    assert host.hello["protocol"] == 1
    assert host.hello["host"] == "videogen_host 0.1.0"
    assert host.hello["pid"] == host.proc.pid
    assert host.hello["device"] == "cpu"
    assert set(host.hello["adapters"]) == {"wan", "ltx", "cogvideox", "hunyuan", "noop"}


def test_full_flow_and_frames(host: HostClient, tiny: Callable[..., Path]) -> None:
    path = tiny("noop", audio=True)
    load = host.load("n", "noop", str(path))
    assert load["ok"] and load["id"] == "n" and load["weights_hash"].startswith("sha256:")
    assert load["supports"] == {
        "image_to_video": True,
        "audio": True,
        "negative_prompt": True,
        "guidance_scale": True,
        "text_to_video": True,
    }
    assert host.load("n", "noop", str(path)) == load  # idempotent
    start = host.start("n", REQ)
    assert start["step"] == 0 and start["total_steps"] == 4
    assert (start["frames"], start["fps"], start["width"], start["height"]) == (9, 16, 64, 32)
    assert start["request_hash"].startswith("sha256:")
    steps = host.run_to_end()
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert host.step()["step"] == 4  # a step on a finished generation is a no-op
    dec = host.decode()
    assert dec.reply["frames"] == 9 and len(dec.frames) == 9
    for i, f in enumerate(dec.frames):
        assert f == bytes([(42 + 31 * 4 + i) % 256]) * (64 * 32 * 3)
    assert dec.reply["audio"] == {"sample_rate": 16000, "channels": 2, "samples": 9000}
    assert dec.audio is not None and len(dec.audio) == 9000 * 2 * 4
    assert struct.unpack_from("<f", dec.audio)[0] == pytest.approx(42 / 255)
    health = host.health()
    assert health["loaded"] == ["n"] and health["generation"]["step"] == 4
    assert host.cancel()["cancelled"] is True
    assert _err(host.step).code == "invalid_request"
    assert host.unload("n") == {"ok": True}
    assert host.health()["loaded"] == []
    assert host.shutdown() == 0


def test_no_torch_in_a_noop_host(host: HostClient, tiny: Callable[..., Path]) -> None:
    host.load("n", "noop", str(tiny("noop")))
    host.start("n", REQ)
    host.step()
    host.checkpoint()
    host.decode()
    maps = Path(f"/proc/{host.proc.pid}/maps").read_text()
    assert "libtorch" not in maps


def test_resume_in_a_fresh_process_and_mismatches(tiny: Callable[..., Path], tmp_path: Path) -> None:
    path = str(tiny("noop"))
    with HostClient() as a:
        a.load("n", "noop", path)
        a.start("n", REQ)
        a.step()
        ck = a.checkpoint()
        assert a.checkpoint() == ck  # taking one changes nothing
        a.run_to_end()
        final = a.checkpoint()
        frames = a.decode().frames
    with HostClient() as b:
        b.load("n", "noop", path)
        r = b.resume("n", REQ, ck)
        assert r["step"] == 1
        b.run_to_end()
        assert b.checkpoint() == final
        assert b.decode().frames == frames
        # another request
        e = _err(lambda: b.resume("n", {**REQ, "seed": 1}, ck))
        assert (e.code, e.param) == ("checkpoint_mismatch", "request_hash")
        # a damaged byte
        bad = bytearray(ck)
        bad[len(bad) // 2] ^= 1
        e = _err(lambda: b.resume("n", REQ, bytes(bad)))
        assert e.code == "corrupt_checkpoint" and not e.retryable
        # other weights
        b.load("other", "noop", str(tiny("noop", seed=1)))
        e = _err(lambda: b.resume("other", REQ, ck))
        assert (e.code, e.param) == ("checkpoint_mismatch", "weights_hash")
        # after a failed resume there is no generation
        assert b.health()["generation"] is None


def test_image_request_and_resume_payload(host: HostClient, tiny: Callable[..., Path]) -> None:
    host.load("n", "noop", str(tiny("noop")))
    img = testing.example_image(8, 8)
    req = {**REQ, "image": {"width": 8, "height": 8}}
    h1 = host.start("n", req, img)["request_hash"]
    host.step()
    ck = host.checkpoint()
    assert host.start("n", REQ)["request_hash"] != h1
    # the worker's way: no pixels on resume, the digest comes from the checkpoint
    r = host.resume("n", req, ck)
    assert (r["step"], r["request_hash"]) == (1, h1)
    # with the digest in the header, the host checks it too
    assert host.resume("n", req, ck, img)["request_hash"] == h1
    e = _err(lambda: host.resume("n", req, ck, bytes(reversed(img))))
    assert (e.code, e.param) == ("checkpoint_mismatch", "request_hash")
    e = _err(lambda: host.resume("n", {**req, "image": {"width": 4, "height": 16}}, ck))
    assert (e.code, e.param) == ("checkpoint_mismatch", "request_hash")
    e = _err(lambda: host.resume("n", REQ, ck))  # the checkpoint had an image, the request has none
    assert (e.code, e.param) == ("checkpoint_mismatch", "request_hash")
    e = _err(lambda: host.start("n", {**req, "image": {"width": 8, "height": 8, "sha256": "0" * 64}}, img))
    assert (e.code, e.param) == ("invalid_request", "image")
    e = _err(lambda: host.start("n", req, img[:-1]))
    assert (e.code, e.param) == ("invalid_request", "image")
    e = _err(lambda: host.start("n", REQ, b"stray payload"))
    assert (e.code, e.param) == ("invalid_request", "image")


@pytest.mark.parametrize(
    ("change", "param"),
    [({"width": 60}, "width"), ({"height": 12}, "height"), ({"steps": 0}, "steps"), ({"seed": "x"}, "seed")],
)
def test_invalid_request(host: HostClient, tiny: Callable[..., Path], change: dict, param: str) -> None:
    host.load("n", "noop", str(tiny("noop")))
    e = _err(lambda: host.start("n", {**REQ, **change}))
    assert e.code == "invalid_request" and e.param == param and e.retryable is False


def test_op_errors(host: HostClient, tiny: Callable[..., Path]) -> None:
    e = _err(lambda: host.call({"op": "frobnicate"}))
    assert (e.code, e.param) == ("invalid_request", "op")
    e = _err(lambda: host.call({"no": "op"}))
    assert (e.code, e.param) == ("invalid_request", "op")
    e = _err(lambda: host.start("missing", REQ))
    assert (e.code, e.param) == ("invalid_request", "id")
    e = _err(lambda: host.load("x", "sora", str(tiny("noop"))))
    assert (e.code, e.param) == ("invalid_request", "model.adapter")
    e = _err(host.checkpoint)
    assert e.code == "invalid_request"
    assert host.health()["ok"]  # still serving


def test_load_failures(host: HostClient, tiny: Callable[..., Path], tmp_path: Path) -> None:
    e = _err(lambda: host.load("x", "noop", str(tmp_path / "does-not-exist")))
    assert e.code == "load_failed" and not e.retryable
    broken = tmp_path / "broken"
    shutil.copytree(tiny("noop"), broken)
    w = broken / "noop.safetensors"
    w.write_bytes(w.read_bytes()[:-7])
    e = _err(lambda: host.load("x", "noop", str(broken)))
    assert e.code == "load_failed"
    (broken / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    assert _err(lambda: host.load("x", "noop", str(broken))).code == "load_failed"
    assert host.health()["loaded"] == []


def test_simulated_oom_and_crash(tiny: Callable[..., Path], tmp_path: Path) -> None:
    d = tmp_path / "faulty"
    shutil.copytree(tiny("noop"), d)
    index = json.loads((d / "model_index.json").read_text())
    index.update({"oom_at_step": 1, "crash_at_step": 2, "crash_marker": str(tmp_path / "crashed")})
    (d / "model_index.json").write_text(json.dumps(index))
    with HostClient() as h:
        h.load("f", "noop", str(d))
        h.start("f", REQ)
        h.step()
        e = _err(h.step)
        assert e.code == "out_of_memory" and e.retryable
        assert h.health()["generation"] is None  # a failed step drops the generation
        h.start("f", {**REQ, "seed": 9})
        h.step()
        h.checkpoint()
    index["oom_at_step"] = None
    (d / "model_index.json").write_text(json.dumps(index))
    with HostClient() as h:
        h.load("f", "noop", str(d))
        h.start("f", REQ)
        h.step()
        h.step()
        h.send({"op": "step"})
        with pytest.raises((ConnectionError, Exception)):
            h.read()
        assert h.proc.wait(10) == 101
        assert (tmp_path / "crashed").exists()


def _raw_host() -> tuple[subprocess.Popen[bytes], socket.socket, str]:
    d = tempfile.mkdtemp(prefix="vgh-", dir="/tmp")
    path = os.path.join(d, "s")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(path)
    lst.listen(1)
    lst.settimeout(60)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "videogen_host", "--connect", path], env=env)
    conn, _ = lst.accept()
    lst.close()
    return proc, conn, d


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        struct.pack("<4sIQ", b"VGH1", (1 << 20) + 1, 0),
        struct.pack("<4sIQ", b"VGH1", 2, 0) + b"[]",
    ],
    ids=["bad-magic", "oversized-header", "non-object-header"],
)
def test_protocol_violation_closes_the_connection(garbage: bytes) -> None:
    proc, conn, d = _raw_host()
    try:
        f = conn.makefile("rb")
        assert read_frame(f).header["op"] == "hello"
        conn.sendall(encode_frame({"op": "health"}))
        assert read_frame(f).header["ok"] is True
        conn.sendall(garbage)
        assert f.read() == b""  # the host closed its end
        assert proc.wait(20) == 2
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


def test_exits_on_eof_and_on_unreachable_socket(tmp_path: Path) -> None:
    proc, conn, d = _raw_host()
    conn.close()
    assert proc.wait(20) == 0
    shutil.rmtree(d, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [sys.executable, "-m", "videogen_host", "--connect", str(tmp_path / "nobody"), "--connect-timeout", "0.2"],
        env=env,
        capture_output=True,
    )
    assert r.returncode == 1 and r.stdout == b""


def test_make_tiny_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = tmp_path / "m"
    r = subprocess.run(
        [sys.executable, "-m", "videogen_host.testing", "make-tiny", "--adapter", "noop", str(out)],
        env=env,
        capture_output=True,
        check=True,
    )
    info = json.loads(r.stdout)
    assert info["adapter"] == "noop" and info["path"] == str(out)
    assert (out / "model_index.json").exists() and (out / "noop.safetensors").exists()
    r = subprocess.run(
        [sys.executable, "-m", "videogen_host.testing", "make-tiny", "--adapter", "noop", str(out)],
        env=env,
        capture_output=True,
    )
    assert r.returncode == 2  # not empty


def test_decoded_latents_helper_shape() -> None:
    # the noop latents follow the documented shape
    from videogen_host.adapters.base import ModelSpec
    from videogen_host.adapters.noop import NoopGeneration, NoopModel
    from videogen_host.request import parse_request

    m = NoopModel(ModelSpec("n", "noop", "/x", None), "sha256:0", {})
    g = NoopGeneration(m, parse_request({**REQ, "frames": 10, "width": 24, "height": 16}, None))
    assert g.latents.shape == (1, 4, 3, 2, 3) and not np.any(g.latents)
