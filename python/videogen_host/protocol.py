"""The ``VGH1`` framing of docs/MODEL_HOST.md.

Every message, in both directions, is one frame::

    magic "VGH1" | header len: u32 LE (<= 1 MiB) | payload len: u64 LE (<= 16 GiB) | header: UTF-8 JSON object | payload

A frame that breaks a bound, or whose header is not a JSON object, is a :class:`ProtocolError`: the peer is broken
and the connection must be closed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC = b"VGH1"
PREFIX = struct.Struct("<4sIQ")
PREFIX_LEN = PREFIX.size  # 16
MAX_HEADER_LEN = 1 << 20  # 1 MiB
MAX_PAYLOAD_LEN = 16 << 30  # 16 GiB
_READ_CHUNK = 1 << 24


class ProtocolError(Exception):
    """The peer broke the framing: close the connection."""


class ConnectionClosed(Exception):
    """The peer closed the connection cleanly, between frames."""


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytes | bytearray | memoryview = field(default=b"")

    @property
    def op(self) -> Any:
        return self.header.get("op")


def encode_header(header: dict[str, Any]) -> bytes:
    if not isinstance(header, dict):
        raise TypeError("a frame header must be a dict")
    data = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > MAX_HEADER_LEN:
        raise ProtocolError(f"header of {len(data)} bytes exceeds {MAX_HEADER_LEN}")
    return data


def encode_frame(
    header: dict[str, Any], payload: bytes | bytearray | memoryview = b"", *, max_payload: int = MAX_PAYLOAD_LEN
) -> bytes:
    """The whole frame as bytes (for small frames and tests; :func:`write_frame` avoids the copy)."""
    head = encode_header(header)
    n = len(payload)
    if n > max_payload:
        raise ProtocolError(f"payload of {n} bytes exceeds {max_payload}")
    return PREFIX.pack(MAGIC, len(head), n) + head + bytes(payload)


def write_frame(
    out: BinaryIO,
    header: dict[str, Any],
    payload: bytes | bytearray | memoryview = b"",
    *,
    max_payload: int = MAX_PAYLOAD_LEN,
    flush: bool = True,
) -> None:
    head = encode_header(header)
    n = memoryview(payload).nbytes
    if n > max_payload:
        raise ProtocolError(f"payload of {n} bytes exceeds {max_payload}")
    out.write(PREFIX.pack(MAGIC, len(head), n) + head)
    if n:
        out.write(payload)
    if flush:
        out.flush()


def _read_exact_into(inp: BinaryIO, buf: memoryview, what: str) -> None:
    got = 0
    total = buf.nbytes
    while got < total:
        end = min(total, got + _READ_CHUNK)
        n = inp.readinto(buf[got:end])  # type: ignore[attr-defined]
        if not n:
            raise ProtocolError(f"connection closed inside the {what} ({got} of {total} bytes)")
        got += n


def parse_prefix(prefix: bytes, *, max_payload: int = MAX_PAYLOAD_LEN) -> tuple[int, int]:
    """Checks magic and bounds of the 16-byte frame prefix; returns (header len, payload len)."""
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if header_len > MAX_HEADER_LEN:
        raise ProtocolError(f"header length {header_len} exceeds {MAX_HEADER_LEN}")
    if payload_len > max_payload:
        raise ProtocolError(f"payload length {payload_len} exceeds {max_payload}")
    return header_len, payload_len


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_header(data: bytes | bytearray) -> dict[str, Any]:
    try:
        header = json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"header is not UTF-8 JSON: {e}") from e
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a JSON {type(header).__name__}, not an object")
    return header


def read_frame(inp: BinaryIO, *, max_payload: int = MAX_PAYLOAD_LEN) -> Frame:
    """Reads one frame. Raises :class:`ConnectionClosed` on EOF before a frame, :class:`ProtocolError` otherwise."""
    prefix = bytearray(PREFIX_LEN)
    view = memoryview(prefix)
    got = 0
    while got < PREFIX_LEN:
        n = inp.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            if got == 0:
                raise ConnectionClosed()
            raise ProtocolError(f"connection closed inside a frame prefix ({got} of {PREFIX_LEN} bytes)")
        got += n
    header_len, payload_len = parse_prefix(bytes(prefix), max_payload=max_payload)
    head = bytearray(header_len)
    _read_exact_into(inp, memoryview(head), "header")
    header = decode_header(head)
    payload = bytearray(payload_len)
    if payload_len:
        _read_exact_into(inp, memoryview(payload), "payload")
    return Frame(header, payload)


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}
