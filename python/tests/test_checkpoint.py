"""Checkpoint container, metadata verification and generic scheduler / generator state capture."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pytest

from videogen_host import checkpoint
from videogen_host.errors import CheckpointMismatch, CorruptCheckpoint

IDENT = checkpoint.Identity(
    adapter="wan", weights_hash="sha256:aa", request_hash="sha256:bb", model_id="m", dtype="float32", total_steps=4
)


def _numpy_ckpt(step: int = 2) -> bytes:
    meta = checkpoint.make_meta(IDENT, step, {"class": "X", "scalars": {}, "tensors": {}, "lists": {}})
    return checkpoint.encode(meta, {"latents": np.arange(12, dtype=np.float32), "rng": np.zeros(8, np.uint8)})


def test_layout() -> None:
    data = _numpy_ckpt()
    assert data[:8] == b"VGHCKPT\0"
    assert struct.unpack("<H", data[8:10])[0] == 1
    (body_len,) = struct.unpack("<Q", data[10:18])
    assert body_len == len(data) - 22
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    meta, tensors = checkpoint.decode(data, "numpy")
    assert meta["adapter"] == "wan" and meta["step"] == 2 and meta["total_steps"] == 4
    assert np.array_equal(tensors["latents"], np.arange(12, dtype=np.float32))
    # the body is a plain safetensors file
    from safetensors.numpy import load

    assert set(load(data[18:-4])) == {"latents", "rng"}


@pytest.mark.parametrize("where", [0, 5, 9, 12, 30, -10, -1])
def test_any_flipped_byte_is_corrupt(where: int) -> None:
    data = bytearray(_numpy_ckpt())
    data[where] ^= 0x40
    with pytest.raises(CorruptCheckpoint):
        checkpoint.decode(bytes(data), "numpy")


def test_truncated_and_extended_are_corrupt() -> None:
    data = _numpy_ckpt()
    for bad in (data[:-1], data + b"\0", data[:10], b""):
        with pytest.raises(CorruptCheckpoint):
            checkpoint.decode(bad, "numpy")


def test_other_format_version_is_a_mismatch() -> None:
    data = bytearray(_numpy_ckpt())
    data[8:10] = struct.pack("<H", 2)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(CheckpointMismatch) as e:
        checkpoint.decode(bytes(data), "numpy")
    assert e.value.param == "format_version"


def test_sound_crc_but_garbage_body_is_corrupt() -> None:
    assert checkpoint.unpack(checkpoint.pack(b"not safetensors at all")).tobytes() == b"not safetensors at all"
    with pytest.raises(CorruptCheckpoint):
        checkpoint.decode(checkpoint.pack(b"not safetensors at all"), "numpy")


@pytest.mark.parametrize(
    ("field", "value"),
    [("adapter", "ltx"), ("weights_hash", "sha256:cc"), ("request_hash", "sha256:dd"), ("dtype", "bfloat16")],
)
def test_verify_names_what_differs(field: str, value: str) -> None:
    meta, _ = checkpoint.decode(_numpy_ckpt(), "numpy")
    other = checkpoint.Identity(**{**IDENT.__dict__, field: value})
    with pytest.raises(CheckpointMismatch) as e:
        checkpoint.verify(meta, other)
    assert e.value.param == field
    assert field in e.value.message
    assert checkpoint.verify(meta, IDENT) == 2


def test_verify_order_adapter_first() -> None:
    meta, _ = checkpoint.decode(_numpy_ckpt(), "numpy")
    other = checkpoint.Identity("ltx", "sha256:x", "sha256:y", total_steps=4)
    with pytest.raises(CheckpointMismatch) as e:
        checkpoint.verify(meta, other)
    assert e.value.param == "adapter"


def test_scalar_encoding_round_trips_exactly() -> None:
    values: list[Any] = [
        None,
        True,
        0,
        -(2**70),
        0.1,
        1e-320,
        float("inf"),
        -float("inf"),
        (1, 2.5, None),
        [1, [2, (3,)]],
        {"a": 1.5},
        np.float64(0.3),
        np.int64(7),
        np.float32(1.1),
        "s",
    ]
    for v in values:
        enc = checkpoint.encode_scalar(v)
        import json

        back = checkpoint.decode_scalar(json.loads(json.dumps(enc, allow_nan=False)))
        assert type(back) is type(v)
        assert back == v or (isinstance(v, float) and np.isnan(v))
    nan = checkpoint.decode_scalar(checkpoint.encode_scalar(float("nan")))
    assert np.isnan(nan)


# -- schedulers ----------------------------------------------------------------------------------------------------


def _schedulers() -> list[tuple[str, Any]]:
    import diffusers

    from videogen_host import testing

    return [
        ("flow-euler", lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)),
        ("flow-euler-stochastic", lambda: diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)),
        ("unipc", lambda: testing.make_scheduler("unipc")),
        ("unipc-eps", lambda: diffusers.UniPCMultistepScheduler(solver_order=3)),
        ("dpm++", lambda: testing.make_scheduler("dpm++")),
        ("dpm++sde", lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")),
        ("ddim", lambda: diffusers.DDIMScheduler()),
        ("cogvideox-ddim", lambda: diffusers.CogVideoXDDIMScheduler()),
        ("cogvideox-dpm", lambda: testing.make_scheduler("cogvideox-dpm")),
        ("euler-ancestral", lambda: diffusers.EulerAncestralDiscreteScheduler()),
    ]


def _step(name: str, sched: Any, out: Any, t: Any, x: Any, gen: Any, state: dict[str, Any], i: int) -> Any:
    if name == "cogvideox-dpm":
        prev_t = sched.timesteps[i - 1] if i > 0 else None
        x, state["old"] = sched.step(out, state.get("old"), t, prev_t, x, generator=gen, return_dict=False)
        return x
    import inspect

    kwargs = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    return sched.step(out, t, x, return_dict=False, **kwargs)[0]


@pytest.mark.parametrize("name", [n for n, _ in _schedulers()])
def test_scheduler_capture_restore_is_bit_exact(name: str) -> None:
    import torch

    make = dict(_schedulers())[name]
    steps = 6
    outs = [torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(100 + i)) for i in range(steps)]

    def run(split: int | None) -> torch.Tensor:
        sched = make()
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(1, 4, 3, 3, generator=gen)
        state: dict[str, Any] = {}
        timesteps = sched.timesteps
        for i in range(steps):
            if split is not None and i == split:
                cap = checkpoint.capture_scheduler(sched)
                tensors = {
                    "latents": x,
                    "rng": checkpoint.generator_state(gen),
                    **cap.tensors,
                    **({"old": state["old"]} if state.get("old") is not None else {}),
                }
                meta = checkpoint.make_meta(IDENT, i, cap.state)
                data = checkpoint.encode(meta, tensors)
                meta2, t2 = checkpoint.decode(data)
                sched = make()
                sched.set_timesteps(steps)
                checkpoint.restore_scheduler(sched, meta2["scheduler_state"], t2)
                gen = torch.Generator()
                checkpoint.restore_generator(gen, t2["rng"])
                x = t2["latents"]
                state = {"old": t2.get("old")}
            x = _step(name, sched, outs[i], timesteps[i], x, gen, state, i)
        return x

    ref = run(None)
    for split in (1, 3, 5):
        assert torch.equal(run(split), ref), split


def test_restore_rejects_other_scheduler_class() -> None:
    import diffusers

    a = diffusers.FlowMatchEulerDiscreteScheduler()
    a.set_timesteps(3)
    cap = checkpoint.capture_scheduler(a)
    b = diffusers.DDIMScheduler()
    with pytest.raises(CheckpointMismatch):
        checkpoint.restore_scheduler(b, cap.state, cap.tensors)


def test_numpy_attributes_round_trip_and_stay_numpy() -> None:
    class S:
        def __init__(self) -> None:
            self.arr = np.linspace(0, 1, 5)
            self.hist = [None, np.ones(2, np.float32)]
            self.k = 3

    s = S()
    cap = checkpoint.capture_scheduler(s)
    data = checkpoint.encode(checkpoint.make_meta(IDENT, 0, cap.state), cap.tensors)
    meta, tensors = checkpoint.decode(data, "numpy")
    r = S()
    r.arr = np.zeros(5)
    r.hist = []
    r.k = 0
    checkpoint.restore_scheduler(r, meta["scheduler_state"], tensors)
    assert isinstance(r.arr, np.ndarray) and np.array_equal(r.arr, s.arr)
    assert r.hist[0] is None and np.array_equal(r.hist[1], s.hist[1])
    assert r.k == 3
