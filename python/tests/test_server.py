"""The request loop in process: error mapping, reply order, protocol violations."""

from __future__ import annotations

import io
from typing import Any

import pytest

from videogen_host.protocol import ConnectionClosed, Frame, encode_frame, read_frame
from videogen_host.server import EXIT_OK, EXIT_PROTOCOL, Host


def _serve(frames: list[bytes], patch: dict[str, Any] | None = None) -> tuple[int, list[Frame]]:
    out = io.BytesIO()
    host = Host(io.BytesIO(b"".join(frames)), out)
    for op, fn in (patch or {}).items():
        host.handlers[op] = fn
    code = host.serve()
    out.seek(0)
    replies = []
    while True:
        try:
            replies.append(read_frame(out))
        except ConnectionClosed:
            return code, replies


def test_one_reply_per_request_in_order() -> None:
    code, replies = _serve([encode_frame({"op": "health"}), encode_frame({"op": "cancel"}), encode_frame({})])
    assert code == EXIT_OK
    assert [r.header.get("ok") for r in replies] == [True, True, False]
    assert replies[0].header["loaded"] == []
    assert replies[2].header["error"]["param"] == "op"


def _raiser(exc: BaseException) -> Any:
    def handler(frame: Frame) -> Any:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RuntimeError("boom"), "internal"),
        (KeyError("x"), "internal"),
        (MemoryError(), "out_of_memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    ],
)
def test_exceptions_become_error_replies(exc: BaseException, code: str) -> None:
    rc, replies = _serve([encode_frame({"op": "step"}), encode_frame({"op": "health"})], {"step": _raiser(exc)})
    assert rc == EXIT_OK
    err = replies[0].header["error"]
    assert err["code"] == code and err["retryable"] is True
    assert replies[1].header["ok"] is True  # still serving


def test_torch_oom_is_out_of_memory() -> None:
    import torch

    _, replies = _serve([encode_frame({"op": "step"})], {"step": _raiser(torch.OutOfMemoryError("no room"))})
    assert replies[0].header["error"]["code"] == "out_of_memory"


def test_shutdown_replies_then_stops() -> None:
    code, replies = _serve([encode_frame({"op": "shutdown"}), encode_frame({"op": "health"})])
    assert code == EXIT_OK
    assert [r.header for r in replies] == [{"ok": True}]


def test_protocol_violation_stops_without_reply() -> None:
    code, replies = _serve([encode_frame({"op": "health"}), b"VGH0" + b"\0" * 12])
    assert code == EXIT_PROTOCOL
    assert len(replies) == 1
