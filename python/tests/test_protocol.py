"""Framing: round trips, bounds, bad magic, malformed headers."""

from __future__ import annotations

import io
import struct

import pytest

from videogen_host import protocol
from videogen_host.protocol import (
    MAGIC,
    MAX_HEADER_LEN,
    ConnectionClosed,
    ProtocolError,
    encode_frame,
    read_frame,
    write_frame,
)


def _raw(
    magic: bytes, header: bytes, payload: bytes = b"", header_len: int | None = None, payload_len: int | None = None
) -> bytes:
    hl = len(header) if header_len is None else header_len
    pl = len(payload) if payload_len is None else payload_len
    return struct.pack("<4sIQ", magic, hl, pl) + header + payload


def test_round_trip_many_frames() -> None:
    buf = io.BytesIO()
    frames = [
        ({"op": "hello", "protocol": 1, "adapters": ["wan"]}, b""),
        ({"op": "frame", "index": 0, "text": "ünïcode ✓"}, bytes(range(256)) * 10),
        ({"ok": True}, b"\x00"),
    ]
    for h, p in frames:
        write_frame(buf, h, p)
    buf.seek(0)
    for h, p in frames:
        f = read_frame(buf)
        assert f.header == h
        assert bytes(f.payload) == p
    with pytest.raises(ConnectionClosed):
        read_frame(buf)


def test_layout_is_little_endian_prefix_then_json_then_payload() -> None:
    data = encode_frame({"op": "step"}, b"xyz")
    assert data[:4] == b"VGH1"
    assert struct.unpack("<I", data[4:8])[0] == len(b'{"op":"step"}')
    assert struct.unpack("<Q", data[8:16])[0] == 3
    assert data[16:-3] == b'{"op":"step"}'
    assert data[-3:] == b"xyz"


def test_header_at_the_bound_is_accepted() -> None:
    filler = "x" * (MAX_HEADER_LEN - len('{"op":"p","f":""}'))
    data = encode_frame({"op": "p", "f": filler})
    assert struct.unpack("<I", data[4:8])[0] == MAX_HEADER_LEN
    assert read_frame(io.BytesIO(data)).header["op"] == "p"


def test_oversized_header_rejected_before_reading_it() -> None:
    class NoMore(io.BytesIO):
        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            n = super().readinto(b)
            if self.tell() > 16:
                raise AssertionError("read past the prefix")
            return n

    data = _raw(MAGIC, b"", header_len=MAX_HEADER_LEN + 1)
    with pytest.raises(ProtocolError, match="header length"):
        read_frame(NoMore(data))
    with pytest.raises(ProtocolError):
        encode_frame({"op": "x" * (MAX_HEADER_LEN + 1)})


def test_payload_bound() -> None:
    data = _raw(MAGIC, b'{"op":"x"}', payload_len=101)
    with pytest.raises(ProtocolError, match="payload length"):
        read_frame(io.BytesIO(data), max_payload=100)
    data = _raw(MAGIC, b'{"op":"x"}', payload_len=protocol.MAX_PAYLOAD_LEN + 1)
    with pytest.raises(ProtocolError, match="payload length"):
        read_frame(io.BytesIO(data))
    with pytest.raises(ProtocolError):
        write_frame(io.BytesIO(), {"op": "x"}, b"12345", max_payload=4)


@pytest.mark.parametrize("magic", [b"VGH2", b"vgh1", b"\x00\x00\x00\x00", b"HTTP"])
def test_bad_magic(magic: bytes) -> None:
    with pytest.raises(ProtocolError, match="magic"):
        read_frame(io.BytesIO(_raw(magic, b'{"op":"x"}')))


@pytest.mark.parametrize("header", [b"[1,2]", b'"op"', b"42", b"null", b"{not json", b"\xff\xfe{}", b"", b'{"x": NaN}'])
def test_header_must_be_a_json_object(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        read_frame(io.BytesIO(_raw(MAGIC, header)))


def test_truncated_frames() -> None:
    full = encode_frame({"op": "x"}, b"payload")
    for cut in (3, 15, 17, len(full) - 1):
        buf = io.BytesIO(full[:cut])
        with pytest.raises(ProtocolError):
            read_frame(buf)
