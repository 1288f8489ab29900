"""Errors that become ``{"ok": false, "error": ...}`` replies (stable codes, see docs/MODEL_HOST.md)."""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request"
CORRUPT_CHECKPOINT = "corrupt_checkpoint"
CHECKPOINT_MISMATCH = "checkpoint_mismatch"
LOAD_FAILED = "load_failed"
OUT_OF_MEMORY = "out_of_memory"
INTERNAL = "internal"

CODES = frozenset({INVALID_REQUEST, CORRUPT_CHECKPOINT, CHECKPOINT_MISMATCH, LOAD_FAILED, OUT_OF_MEMORY, INTERNAL})
RETRYABLE = frozenset({OUT_OF_MEMORY, INTERNAL})


class HostError(Exception):
    """An operation failed in a way the worker can act on; carried back as an error reply."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable, "param": self.param}

    def __repr__(self) -> str:
        return f"HostError({self.code!r}, {self.message!r}, param={self.param!r})"


class InvalidRequest(HostError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(INVALID_REQUEST, message, param=param)


class CorruptCheckpoint(HostError):
    def __init__(self, message: str) -> None:
        super().__init__(CORRUPT_CHECKPOINT, message)


class CheckpointMismatch(HostError):
    """A sound checkpoint of another adapter, weights or request; ``which`` names the field that differs."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(CHECKPOINT_MISMATCH, message, param=which)
        self.which = which


class LoadFailed(HostError):
    def __init__(self, message: str) -> None:
        super().__init__(LOAD_FAILED, message)
