"""A worker-side client, as the Rust worker drives a host: listen on a private Unix socket, spawn
``python -m videogen_host --connect PATH``, accept its one connection, read ``hello``, then request / reply.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import PROTOCOL_VERSION
from .protocol import Frame, read_frame, write_frame

PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class ReplyError(Exception):
    """An ``{"ok": false}`` reply."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error
        self.code: str = error.get("code", "")
        self.param: str | None = error.get("param")
        self.retryable: bool = bool(error.get("retryable"))


@dataclass
class Decoded:
    reply: dict[str, Any]
    frames: list[bytes]
    audio: bytes | None


class HostClient:
    """One host process and its connection. Use as a context manager."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int | None = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        accept_timeout: float = 120.0,
        reply_timeout: float | None = 600.0,
        stderr: int | IO[Any] | None = None,
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="vgh-", dir="/tmp")
        self.path = os.path.join(self.dir, "host.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(accept_timeout)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, full_env.get("PYTHONPATH")) if p)
        full_env["VIDEOGEN_HOST_DEVICE"] = device
        if threads is not None:
            full_env["VIDEOGEN_HOST_THREADS"] = str(threads)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [python, "-m", "videogen_host", "--connect", self.path], env=full_env, stderr=stderr
        )
        try:
            self.conn, _ = self.listener.accept()
        except TimeoutError:
            self.close()
            raise
        self.conn.settimeout(reply_timeout)
        self.rfile = self.conn.makefile("rb", buffering=1 << 20)
        self.wfile = self.conn.makefile("wb", buffering=1 << 20)
        self.hello = self.read().header
        if self.hello.get("op") != "hello" or self.hello.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise RuntimeError(f"unexpected hello {self.hello!r}")

    # -- plumbing --------------------------------------------------------------------------------------------------

    def __enter__(self) -> HostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> Frame:
        return read_frame(self.rfile)

    def send(self, header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> None:
        write_frame(self.wfile, header, payload)

    def call(self, header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> Frame:
        """Sends a request and reads its reply; raises :class:`ReplyError` for ``ok: false``."""
        self.send(header, payload)
        reply = self.read()
        if reply.header.get("ok") is not True:
            raise ReplyError(reply.header.get("error") or {})
        return reply

    def close(self, timeout: float = 30.0) -> int | None:
        """Closes the connection (the host exits on EOF) and reaps the process."""
        for name in ("wfile", "rfile", "conn"):
            obj = getattr(self, name, None)
            if obj is not None:
                with contextlib.suppress(OSError):
                    obj.close()
        self.listener.close()
        code = None
        if self.proc.poll() is None:
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        else:
            code = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return code

    # -- ops -------------------------------------------------------------------------------------------------------

    def load(self, model_id: str, adapter: str, path: str, dtype: str | dict[str, str] | None = "float32") -> dict:
        model: dict[str, Any] = {"id": model_id, "adapter": adapter, "path": str(path)}
        if dtype is not None:
            model["dtype"] = dtype
        return self.call({"op": "load", "model": model}).header

    def unload(self, model_id: str) -> dict[str, Any]:
        return self.call({"op": "unload", "id": model_id}).header

    def start(self, model_id: str, request: dict[str, Any], image: bytes = b"") -> dict[str, Any]:
        return self.call({"op": "start", "id": model_id, "request": request}, image).header

    def resume(self, model_id: str, request: dict[str, Any], ckpt: bytes, image: bytes | None = None) -> dict[str, Any]:
        """The payload is the checkpoint alone. With ``image`` (its RGB bytes) the header's ``image`` carries their
        ``sha256`` so the host checks them too; without, the host takes the digest from the checkpoint."""
        if image and request.get("image") is not None:
            request = {**request, "image": {**request["image"], "sha256": hashlib.sha256(image).hexdigest()}}
        return self.call({"op": "resume", "id": model_id, "request": request}, ckpt).header

    def step(self, preview: bool = False) -> dict[str, Any]:
        """One step; with ``preview`` the reply carries the latents' statistics."""
        return self.call({"op": "step", "preview": preview}).header

    def checkpoint(self) -> bytes:
        reply = self.call({"op": "checkpoint"})
        data = bytes(reply.payload)
        if reply.header.get("bytes") != len(data):
            raise RuntimeError("checkpoint length does not match its reply")
        return data

    def decode(self) -> Decoded:
        reply = self.call({"op": "decode"}).header
        frames = []
        for i in range(int(reply["frames"])):
            f = self.read()
            if f.header != {"op": "frame", "index": i}:
                raise RuntimeError(f"expected frame {i}, got {f.header!r}")
            if len(f.payload) != reply["width"] * reply["height"] * 3:
                raise RuntimeError(f"frame {i} has {len(f.payload)} bytes")
            frames.append(bytes(f.payload))
        audio = None
        if reply.get("audio"):
            a = self.read()
            if a.header.get("op") != "audio":
                raise RuntimeError(f"expected audio, got {a.header!r}")
            audio = bytes(a.payload)
        return Decoded(reply, frames, audio)

    def cancel(self) -> dict[str, Any]:
        return self.call({"op": "cancel"}).header

    def health(self) -> dict[str, Any]:
        return self.call({"op": "health"}).header

    def shutdown(self) -> int | None:
        self.call({"op": "shutdown"})
        return self.close()

    def run_to_end(self) -> list[dict[str, Any]]:
        """Steps until ``step == total_steps``; returns the step replies."""
        out = []
        while True:
            r = self.step()
            out.append(r)
            if r["step"] >= r["total_steps"]:
                return out
