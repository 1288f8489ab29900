"""Per adapter, through real host processes: an uninterrupted run equals the diffusers pipeline's own ``__call__``
for the same seed, and a checkpoint taken after any step resumes in another (fresh) host process to the same
latents (the whole final checkpoint, byte for byte) and the same frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from videogen_host import testing
from videogen_host.client import HostClient


@dataclass(frozen=True)
class Case:
    variant: str
    scheduler: str = "default"
    dtype: str = "float32"
    image: tuple[int, int] | None = None  # conditioning image size (None: the variant's default)
    force_image: bool = False  # send an image to a model whose default request has none

    @property
    def id(self) -> str:
        s = self.variant
        if self.scheduler != "default":
            s += f"+{self.scheduler}"
        if self.dtype != "float32":
            s += f"@{self.dtype}"
        if self.force_image:
            s += "+image"
        return s

    @property
    def adapter(self) -> str:
        return str(testing.spec(self.variant)["adapter"])

    def request(self) -> tuple[dict[str, Any], bytes]:
        req = testing.example_request(self.variant)
        if req["image"] is None and not self.force_image:
            return req, b""
        w, h = self.image or (req["width"], req["height"])
        req["image"] = {"width": w, "height": h}
        return req, testing.example_image(w, h)


CASES = [
    Case("wan"),
    Case("wan-i2v", image=(48, 40)),
    Case("ltx"),
    Case("ltx-i2v", image=(40, 24)),
    Case("ltx", force_image=True, image=(32, 32)),
    Case("cogvideox"),
    Case("cogvideox-i2v", image=(24, 16)),
    Case("hunyuan"),
    Case("wan", scheduler="unipc"),
    Case("wan", scheduler="dpm++", dtype="bfloat16"),
    Case("cogvideox", scheduler="cogvideox-dpm"),
    Case("hunyuan", scheduler="flow-stochastic"),
]


@dataclass
class Run:
    model_id: str
    path: Path
    start: dict[str, Any]
    ckpts: list[bytes]  # ckpts[k]: after k steps
    previews: list[dict[str, Any]]  # previews[k]: the reply of step k+1
    frames: list[bytes]
    decode: dict[str, Any]


@pytest.fixture(scope="module")
def host_a() -> Iterator[HostClient]:
    with HostClient() as h:
        yield h


@pytest.fixture(scope="module")
def host_b() -> Iterator[HostClient]:
    with HostClient() as h:
        yield h


@pytest.fixture(scope="module")
def runs(host_a: HostClient, tiny: Callable[..., Path]) -> Callable[[Case], Run]:
    cache: dict[Case, Run] = {}

    def get(case: Case) -> Run:
        if case not in cache:
            path = tiny(case.variant, scheduler=case.scheduler)
            model_id = case.id
            host_a.load(model_id, case.adapter, str(path), case.dtype)
            req, img = case.request()
            start = host_a.start(model_id, req, img)
            ckpts = [host_a.checkpoint()]
            previews = []
            while True:
                r = host_a.step(preview=True)
                assert r["preview"] is not None
                previews.append(r)
                ckpts.append(host_a.checkpoint())
                if r["step"] == 2:
                    host_a.decode()  # a preview decode must not perturb the run
                if r["step"] == r["total_steps"]:
                    break
            dec = host_a.decode()
            cache[case] = Run(model_id, path, start, ckpts, previews, dec.frames, dec.reply)
        return cache[case]

    return get


def reference_frames(case: Case, path: Path) -> np.ndarray:
    """``pipe(...)`` of the real diffusers pipeline, loaded from the same dir, in this process."""
    from videogen_host import runtime

    torch = runtime.setup_torch()
    import diffusers

    from videogen_host.adapters.base import read_model_index
    from videogen_host.adapters.diffusers_base import load_pipeline, torch_dtype
    from videogen_host.adapters.wan import ensure_ftfy_shim

    ensure_ftfy_shim()
    cls = getattr(diffusers, read_model_index(path)["_class_name"])
    pipe = load_pipeline(cls, str(path), torch_dtype(case.dtype))
    pipe.set_progress_bar_config(disable=True)
    req, img = case.request()
    kwargs: dict[str, Any] = {
        "prompt": req["prompt"],
        "height": req["height"],
        "width": req["width"],
        "num_frames": req["frames"],
        "num_inference_steps": req["steps"],
        "guidance_scale": req["guidance_scale"],
        "generator": torch.Generator().manual_seed(req["seed"]),
        "output_type": "np",
    }
    if case.adapter != "hunyuan":
        kwargs["negative_prompt"] = req["negative_prompt"]
    if case.adapter == "ltx":
        kwargs["frame_rate"] = req["fps"]
        if img and cls is diffusers.LTXPipeline:
            pipe = diffusers.LTXImageToVideoPipeline(**pipe.components)
            pipe.set_progress_bar_config(disable=True)
    if case.adapter == "cogvideox":
        kwargs["max_sequence_length"] = pipe.transformer.config.max_text_seq_length
    if img:
        from PIL import Image

        kwargs["image"] = Image.frombytes("RGB", (req["image"]["width"], req["image"]["height"]), img)
    torch.manual_seed(req["seed"])  # as the host does (schedulers drawing from the global RNG)
    video = np.asarray(pipe(**kwargs).frames)[0]
    return (video * 255).round().astype(np.uint8)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_uninterrupted_run_equals_the_pipeline(case: Case, runs: Callable[[Case], Run]) -> None:
    run = runs(case)
    req, _ = case.request()
    assert run.start["step"] == 0 and run.start["total_steps"] == req["steps"]
    assert (run.decode["frames"], run.decode["width"], run.decode["height"]) == (
        req["frames"],
        req["width"],
        req["height"],
    )
    got = np.stack([np.frombuffer(f, np.uint8).reshape(req["height"], req["width"], 3) for f in run.frames])
    ref = reference_frames(case, run.path)
    assert ref.shape == got.shape
    assert np.array_equal(ref, got), f"max abs diff {np.abs(ref.astype(int) - got).max()}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resume_in_another_process_is_bit_exact(case: Case, runs: Callable[[Case], Run], host_b: HostClient) -> None:
    run = runs(case)
    req, img = case.request()
    host_b.load(run.model_id, case.adapter, str(run.path), case.dtype)
    n = run.start["total_steps"]
    for k in range(n + 1):
        # odd k: as the worker resumes (no pixels, digest from the checkpoint); even k: digest in the header
        r = host_b.resume(run.model_id, req, run.ckpts[k], img if k % 2 == 0 else None)
        assert r["step"] == k and r["request_hash"] == run.start["request_hash"]
        assert host_b.checkpoint() == run.ckpts[k]
        for j in range(k, n):
            assert host_b.step(preview=True) == run.previews[j]
        assert host_b.checkpoint() == run.ckpts[n], f"resumed at {k}: final state differs"
        assert host_b.decode().frames == run.frames, f"resumed at {k}: frames differ"


def test_wan_resume_in_a_fresh_process_per_k(runs: Callable[[Case], Run]) -> None:
    """The strict form for Wan: one brand-new host per resume point (first, middle, last step)."""
    case = CASES[0]
    run = runs(case)
    req, img = case.request()
    n = run.start["total_steps"]
    hosts = {k: HostClient() for k in (1, n // 2, n)}
    try:
        load = {"op": "load", "model": {"id": run.model_id, "adapter": case.adapter, "path": str(run.path)}}
        for h in hosts.values():  # the three hosts import torch and load in parallel
            h.send(load)
        for k, h in hosts.items():
            assert h.read().header["ok"] is True
            assert h.resume(run.model_id, req, run.ckpts[k], img)["step"] == k
            h.run_to_end()
            assert h.checkpoint() == run.ckpts[n]
            assert h.decode().frames == run.frames
    finally:
        for h in hosts.values():
            h.close()
