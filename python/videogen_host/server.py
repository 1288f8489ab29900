"""The request loop: one connection, one request in flight, exactly one reply per request (docs/MODEL_HOST.md)."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from . import HOST_NAME, PROTOCOL_VERSION, adapters, runtime
from .adapters.base import Generation, LoadedModel, ModelSpec
from .errors import INTERNAL, OUT_OF_MEMORY, HostError, InvalidRequest
from .protocol import MAX_PAYLOAD_LEN, ConnectionClosed, Frame, ProtocolError, read_frame, write_frame
from .request import parse_request

log = logging.getLogger("videogen_host")

Reply = tuple[dict[str, Any], Any]  # (header, payload)
Handler = Callable[[Frame], "Reply | Iterator[Reply]"]

EXIT_OK = 0
EXIT_PROTOCOL = 2

# Pacing: the least wall time one step takes (`VIDEOGEN_HOST_MIN_STEP_MS`, default 0), like the reference
# model's step-ms knob: demos and failure drills get a wide "in the middle of a generation" window.
MIN_STEP_SECONDS = max(0.0, float(os.environ.get("VIDEOGEN_HOST_MIN_STEP_MS", "0") or 0) / 1000.0)


class Shutdown(Exception):
    pass


def _error_reply(e: HostError) -> dict[str, Any]:
    return {"ok": False, "error": e.to_json()}


def _as_host_error(e: BaseException) -> HostError:
    if isinstance(e, HostError):
        return e
    if runtime.is_oom(e):
        return HostError(OUT_OF_MEMORY, f"out of memory: {e}")
    return HostError(INTERNAL, f"{type(e).__name__}: {e}")


def _str_field(obj: dict[str, Any], key: str, param: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"`{param}` must be a non-empty string", param)
    return v


class Host:
    def __init__(self, rfile: BinaryIO, wfile: BinaryIO, *, max_payload: int = MAX_PAYLOAD_LEN) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.max_payload = max_payload
        self.device = runtime.device_kind()
        self.models: dict[str, LoadedModel] = {}
        self.load_replies: dict[str, dict[str, Any]] = {}
        self.gen: Generation | None = None
        self.gen_model: str | None = None
        self.handlers: dict[str, Handler] = {
            "load": self.op_load,
            "unload": self.op_unload,
            "start": self.op_start,
            "resume": self.op_resume,
            "step": self.op_step,
            "checkpoint": self.op_checkpoint,
            "decode": self.op_decode,
            "cancel": self.op_cancel,
            "health": self.op_health,
            "shutdown": self.op_shutdown,
        }

    # -- wire ------------------------------------------------------------------------------------------------------

    def send(self, header: dict[str, Any], payload: Any = b"") -> None:
        write_frame(self.wfile, header, payload if payload is not None else b"", max_payload=self.max_payload)

    def hello(self) -> None:
        self.send(
            {
                "op": "hello",
                "protocol": PROTOCOL_VERSION,
                "host": HOST_NAME,
                "pid": os.getpid(),
                "device": runtime.device_name(),
                "adapters": adapters.names(),
            }
        )

    def serve(self) -> int:
        """Serves until EOF or ``shutdown`` (0) or a protocol violation (2)."""
        while True:
            try:
                frame = read_frame(self.rfile, max_payload=self.max_payload)
            except ConnectionClosed:
                log.info("connection closed by the worker")
                return EXIT_OK
            except ProtocolError as e:
                log.error("protocol violation, closing the connection: %s", e)
                return EXIT_PROTOCOL
            try:
                self.dispatch(frame)
            except Shutdown:
                return EXIT_OK
            except (BrokenPipeError, ConnectionResetError) as e:
                log.info("connection lost while replying: %s", e)
                return EXIT_OK

    def dispatch(self, frame: Frame) -> None:
        op = frame.header.get("op")
        t0 = time.monotonic()
        replies: list[Reply] | Iterator[Reply]
        try:
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise InvalidRequest(f"unknown op {op!r}", "op")
            result = handler(frame)
            replies = [result] if isinstance(result, tuple) else result
        except Shutdown:
            self.send({"ok": True})
            raise
        except Exception as e:  # noqa: BLE001 - every failure of an op becomes an error reply
            err = _as_host_error(e)
            if err.code in (INTERNAL, OUT_OF_MEMORY):
                log.error("op %s failed: %s\n%s", op, err.message, traceback.format_exc())
                if err.code == OUT_OF_MEMORY:
                    runtime.free_device_memory()
            else:
                log.info("op %s: %s: %s", op, err.code, err.message)
            self.send(_error_reply(err))
            return
        for header, payload in replies:
            self.send(header, payload)
        log.debug("op %s done in %.3fs", op, time.monotonic() - t0)

    # -- generation bookkeeping -------------------------------------------------------------------------------------

    def drop_generation(self) -> None:
        if self.gen is not None:
            self.gen.close()
        self.gen = None
        self.gen_model = None

    def need_generation(self) -> Generation:
        if self.gen is None:
            raise InvalidRequest("no generation in progress (start or resume one first)", "op")
        return self.gen

    def need_model(self, header: dict[str, Any]) -> LoadedModel:
        mid = _str_field(header, "id", "id")
        model = self.models.get(mid)
        if model is None:
            raise InvalidRequest(f"model {mid!r} is not loaded", "id")
        return model

    # -- ops -------------------------------------------------------------------------------------------------------

    def op_load(self, frame: Frame) -> Reply:
        m = frame.header.get("model")
        if not isinstance(m, dict):
            raise InvalidRequest("`model` must be an object", "model")
        spec = ModelSpec(
            id=_str_field(m, "id", "model.id"),
            adapter=_str_field(m, "adapter", "model.adapter"),
            path=_str_field(m, "path", "model.path"),
            dtype=m.get("dtype"),
        )
        if spec.adapter not in adapters.ADAPTERS:
            raise InvalidRequest(
                f"unknown adapter {spec.adapter!r} (this host has {', '.join(adapters.names())})", "model.adapter"
            )
        if spec.dtype is not None and not isinstance(spec.dtype, (str, dict)):
            raise InvalidRequest("`model.dtype` must be a string or an object", "model.dtype")
        loaded = self.models.get(spec.id)
        if loaded is not None:
            if (loaded.spec.adapter, loaded.spec.path, loaded.spec.dtype_key(self.device)) != (
                spec.adapter,
                spec.path,
                spec.dtype_key(self.device),
            ):
                raise InvalidRequest(f"model {spec.id!r} is already loaded with another adapter, path or dtype", "id")
            return self.load_replies[spec.id], b""
        model = adapters.load(spec, self.device)
        model.device_kind = self.device
        self.models[spec.id] = model
        reply = {
            "ok": True,
            "id": spec.id,
            "adapter": spec.adapter,
            "weights_hash": model.weights_hash,
            "load_seconds": round(model.load_seconds, 6),
            "memory_bytes": int(model.memory_bytes),
            "supports": model.supports.to_json(),
        }
        self.load_replies[spec.id] = reply
        return reply, b""

    def op_unload(self, frame: Frame) -> Reply:
        mid = _str_field(frame.header, "id", "id")
        model = self.models.pop(mid, None)
        self.load_replies.pop(mid, None)
        if self.gen_model == mid:
            self.drop_generation()
        if model is not None:
            model.unload()
            runtime.free_device_memory()
        return {"ok": True}, b""

    def _begin(self, frame: Frame, resume: bool) -> Reply:
        model = self.need_model(frame.header)
        raw = frame.header.get("request")
        payload = memoryview(frame.payload)
        if resume:
            # the payload is the checkpoint alone; the image's digest comes from the header or the checkpoint
            req = parse_request(raw, None, resume=True)
        else:
            has_image = isinstance(raw, dict) and raw.get("image") is not None
            if not has_image and payload.nbytes:
                raise InvalidRequest("start carries a payload but no `image`", "image")
            req = parse_request(raw, payload)
        self.drop_generation()
        if runtime.device_kind() == "cuda":
            runtime.free_device_memory()
        gen = model.resume(req, payload) if resume else model.start(req)
        self.gen = gen
        self.gen_model = model.id
        return (
            {
                "ok": True,
                "step": gen.step_index,
                "total_steps": gen.total_steps,
                "frames": gen.out_frames(),
                "fps": req.fps,
                "width": gen.out_width(),
                "height": gen.out_height(),
                "request_hash": gen.request_hash,
            },
            b"",
        )

    def op_start(self, frame: Frame) -> Reply:
        try:
            return self._begin(frame, resume=False)
        except BaseException:
            self.drop_generation()
            raise

    def op_resume(self, frame: Frame) -> Reply:
        try:
            return self._begin(frame, resume=True)
        except BaseException:
            self.drop_generation()
            raise

    def op_step(self, frame: Frame) -> Reply:
        gen = self.need_generation()
        began = time.monotonic()
        try:
            gen.step()
        except BaseException:
            self.drop_generation()
            raise
        rest = MIN_STEP_SECONDS - (time.monotonic() - began)
        if rest > 0:
            time.sleep(rest)
        # Latent statistics cost a pass over the latents: only when asked for.
        preview = gen.preview() if frame.header.get("preview") is True else None
        return {"ok": True, "step": gen.step_index, "total_steps": gen.total_steps, "preview": preview}, b""

    def op_checkpoint(self, frame: Frame) -> Reply:
        gen = self.need_generation()
        data = gen.checkpoint()
        return {"ok": True, "step": gen.step_index, "bytes": len(data)}, data

    def op_decode(self, frame: Frame) -> list[Reply]:
        gen = self.need_generation()
        video = gen.decode()
        n, h, w = int(video.frames.shape[0]), int(video.frames.shape[1]), int(video.frames.shape[2])
        audio = None
        if video.audio is not None:
            audio = {
                "sample_rate": video.audio.sample_rate,
                "channels": video.audio.channels,
                "samples": int(video.audio.pcm.shape[0]),
            }
        replies: list[Reply] = [
            ({"ok": True, "frames": n, "width": w, "height": h, "fps": video.fps, "audio": audio}, b"")
        ]
        for i in range(n):
            replies.append(({"op": "frame", "index": i}, memoryview(video.frames[i]).cast("B")))
        if video.audio is not None:
            pcm = video.audio.pcm.astype("<f4", copy=False)
            replies.append(({"op": "audio"}, memoryview(pcm.tobytes())))
        return replies

    def op_cancel(self, frame: Frame) -> Reply:
        had = self.gen is not None
        self.drop_generation()
        return {"ok": True, "cancelled": had}, b""

    def op_health(self, frame: Frame) -> Reply:
        allocated, total = runtime.memory()
        gen = None
        if self.gen is not None:
            gen = {"id": self.gen_model, "step": self.gen.step_index, "total_steps": self.gen.total_steps}
        return (
            {
                "ok": True,
                "loaded": list(self.models),
                "device": runtime.device_name(),
                "memory_allocated": allocated,
                "memory_total": total,
                "generation": gen,
                "pid": os.getpid(),
            },
            b"",
        )

    def op_shutdown(self, frame: Frame) -> Reply:
        raise Shutdown()
