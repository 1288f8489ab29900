"""The Python parts of ``scripts/gpu-check.sh``: a full-size, randomly initialised Wan2.1-T2V-1.3B through the host's
own code on one GPU (``--cpu-smoke``: the same with tiny configs on the CPU, in seconds).

CLI (``python -m videogen_host.gpu_check``)::

    probe   [--cpu-smoke] --json FILE       can this interpreter run the check? exit 0 yes, 2 no (FILE says why)
    prepare [--cpu-smoke] --work DIR        build + save_pretrained the random pipeline (reused when present), then
            [--steps N] [--no-inproc]       run each size in process through the wan adapter: s/step, peak memory,
                                            checkpoint size and time, resume equality -> DIR/prepare.json
    drive   --server URL --key KEY ...      the end-to-end part: 480p and 720p jobs through server + worker + host,
                                            one of them with its host process killed after a checkpoint -> JSON
    registry --id ID --path DIR             the [[models]] entry the script gives the server and the worker
    report  --work DIR [--e2e FILE]         the table and one JSON line (last), from DIR/prepare.json and the
            [--require-resume]              drive's JSON; exit 1 when a required resume is missing or differs
            [--require-equal]

No weights of the real model exist here: the components are built from the published configs (below) with random
weights, so the numbers measure the architecture at full size (compute, memory, checkpoint and I/O), not quality.
Config sources: diffusers ``scripts/convert_wan_to_diffusers.py`` (``Wan-T2V-1.3B`` transformer config;
``AutoencoderKLWan()`` defaults for the VAE; ``UMT5EncoderModel.from_pretrained("google/umt5-xxl")``;
``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
flow_shift=3.0)``), and google/umt5-xxl's ``config.json``. The tokenizer is built in process (``testing.t5_tokenizer``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------------------------
# Published configs

# Wan 2.1 VAE latent statistics (AutoencoderKLWan's defaults, as Wan2.1_VAE.pth ships them).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip

_UNIPC_FLOW = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "num_train_timesteps": 1000,
    "flow_shift": 3.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, full size.
    "wan2.1-t2v-1.3b": {
        "transformer": {
            "patch_size": [1, 2, 2],
            "num_attention_heads": 12,
            "attention_head_dim": 128,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 4096,
            "freq_dim": 256,
            "ffn_dim": 8960,
            "num_layers": 30,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-06,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": 1024,
        },
        "vae": {
            "base_dim": 96,
            "z_dim": 16,
            "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2,
            "attn_scales": [],
            "temperal_downsample": [False, True, True],
            "dropout": 0.0,
            "latents_mean": WAN21_LATENTS_MEAN,
            "latents_std": WAN21_LATENTS_STD,
        },
        # google/umt5-xxl config.json (the encoder half is what Wan uses).
        "text_encoder": {
            "vocab_size": 256384,
            "d_model": 4096,
            "d_kv": 64,
            "d_ff": 10240,
            "num_layers": 24,
            "num_decoder_layers": 24,
            "num_heads": 64,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "dropout_rate": 0.1,
            "layer_norm_epsilon": 1e-06,
            "initializer_factor": 1.0,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "decoder_start_token_id": 0,
        },
        "scheduler": _UNIPC_FLOW,
        "tokenizer_max_length": 512,
        # what save_pretrained writes (the published dir has the text encoder in bf16 too); loads use `dtype`
        "save_dtypes": {"transformer": "bfloat16", "text_encoder": "bfloat16", "vae": "float32"},
        "device": "cuda",
        "dtype": "bfloat16",
        "sizes": ["832x480", "1280x720"],
        "fps": 16,
        "seconds": 1,
        "steps": 8,
    },
    # The same pipeline with tiny components (diffusers' own test sizes), for --cpu-smoke.
    "tiny": {
        "transformer": {
            "patch_size": [1, 2, 2],
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 32,
            "freq_dim": 256,
            "ffn_dim": 32,
            "num_layers": 2,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-06,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": 32,
        },
        "vae": {
            "base_dim": 3,
            "z_dim": 16,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "attn_scales": [],
            "temperal_downsample": [False, True, True],
            "dropout": 0.0,
            "latents_mean": WAN21_LATENTS_MEAN,
            "latents_std": WAN21_LATENTS_STD,
        },
        "text_encoder": {
            "vocab_size": 256,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 37,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 32,
            "dropout_rate": 0.0,
            "layer_norm_epsilon": 1e-06,
            "initializer_factor": 1.0,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "decoder_start_token_id": 0,
        },
        "scheduler": _UNIPC_FLOW,
        "tokenizer_max_length": 512,
        "save_dtypes": {"transformer": "float32", "text_encoder": "float32", "vae": "float32"},
        "device": "cpu",
        "dtype": "float32",
        "sizes": ["32x32", "64x48"],
        "fps": 16,
        "seconds": 1,
        "steps": 8,
    },
}

FULL = "wan2.1-t2v-1.3b"
TINY = "tiny"
MARKER = ".gpu_check.json"  # in the model dir; a leading dot keeps it out of the weights hash
PROMPT = "a red fox runs in the snow, slow camera, high quality"
NEGATIVE = "blurry, low quality, static"
SEED = 42
GUIDANCE = 5.0

# The runtime packages of python/requirements.txt (pytest and ruff are for the tests only).
RUNTIME_PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "safetensors", "numpy")


def preset_name(cpu_smoke: bool) -> str:
    return TINY if cpu_smoke else FULL


def frames_for(preset: dict[str, Any]) -> int:
    """The registry's frame count for ``seconds`` at ``fps``: 4n + 1 at or above fps * seconds (1 s at 16 fps: 17)."""
    raw = int(preset["fps"]) * int(preset["seconds"])
    n = max(1, -(-(raw - 1) // 4))
    return 4 * n + 1


def parse_size(size: str) -> tuple[int, int]:
    w, h = size.lower().split("x")
    return int(w), int(h)


def config_digest(preset: dict[str, Any]) -> str:
    keys = ("transformer", "vae", "text_encoder", "scheduler", "tokenizer_max_length", "save_dtypes")
    blob = json.dumps({k: preset[k] for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def count(n: float) -> str:
    """1.234 B, 12.3 M, 65.9 k."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g} {unit}" if unit != "B" else f"{n / div:.3f} B"
    return f"{n:.0f}"


def nbytes(n: float) -> str:
    """Bytes in GB / MB / kB (decimal)."""
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def log(msg: str) -> None:
    print(f"gpu-check: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------------
# probe


def requirement_pins() -> dict[str, str]:
    """``name -> version`` from python/requirements.txt (the pins the adapters are written against)."""
    pins: dict[str, str] = {}
    path = Path(__file__).resolve().parent.parent / "requirements.txt"
    with contextlib.suppress(OSError):
        for line in path.read_text("utf-8").splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def probe(cpu_smoke: bool) -> dict[str, Any]:
    """What this interpreter has: the runtime packages (versions against the pins) and, for the GPU run, CUDA."""
    pins = requirement_pins()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "venv": sys.prefix != sys.base_prefix,
        "packages": {},
        "missing": [],
        "mismatched": [],
        "problems": [],
        "install": [],
    }
    if sys.version_info < (3, 11):  # noqa: UP036 - probing an interpreter that may be older than the package needs
        report["problems"].append(f"python {report['python']} is older than 3.11 (videogen_host needs >= 3.11)")
    for name in RUNTIME_PACKAGES:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a broken install is as missing as an absent one
            report["missing"].append(name)
            report["packages"][name] = f"not importable: {type(e).__name__}: {e}"
            continue
        version = str(getattr(mod, "__version__", "?"))
        report["packages"][name] = version
        pin = pins.get(name)
        if pin and version.split("+")[0] != pin:
            report["mismatched"].append(f"{name} {version} (pinned {pin})")
    if "torch" not in report["missing"]:
        import torch

        report["torch_cuda"] = torch.version.cuda
        report["cuda_available"] = bool(torch.cuda.is_available())
        if report["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            report["gpu"] = props.name
            report["gpu_memory_bytes"] = int(props.total_memory)
            report["gpu_count"] = torch.cuda.device_count()
        elif not cpu_smoke:
            why = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            report["problems"].append(
                f"torch {torch.__version__} is {why} but torch.cuda.is_available() is False "
                "(no GPU visible, or the NVIDIA driver is older than this CUDA build needs)"
            )
    for name in RUNTIME_PACKAGES:
        mismatched = any(m.startswith(name + " ") for m in report["mismatched"])
        torch_unusable = name == "torch" and not cpu_smoke and not report.get("cuda_available", False)
        if name in report["missing"] or (mismatched and name != "torch") or torch_unusable:
            report["install"].append(f"{name}=={pins[name]}" if name in pins else name)
    report["ok"] = not report["missing"] and not report["problems"]
    return report


# --------------------------------------------------------------------------------------------------------------------
# Building the random pipeline


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_pipeline(preset: dict[str, Any], device: str, seed: int = 0) -> Any:
    """The random ``WanPipeline`` of ``preset``, its modules created on ``device`` and cast to the save dtypes."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from . import testing

    save = preset["save_dtypes"]

    def cast(module: Any, name: str) -> Any:
        want = _dtype(save[name])
        # created in float32, cast one component at a time (the largest, UMT5-XXL, is 22.7 GB in float32)
        return module.to(want) if module.dtype != want else module

    with torch.device(device):
        torch.manual_seed(seed)
        transformer = cast(WanTransformer3DModel(**preset["transformer"]).eval(), "transformer")
        torch.manual_seed(seed + 1)
        vae = cast(AutoencoderKLWan(**preset["vae"]).eval(), "vae")
        torch.manual_seed(seed + 2)
        text_encoder = cast(UMT5EncoderModel(UMT5Config(**preset["text_encoder"])).eval(), "text_encoder")
    return WanPipeline(
        tokenizer=testing.t5_tokenizer(preset["tokenizer_max_length"]),
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**preset["scheduler"]),
    )


def param_counts(pipe: Any) -> dict[str, int]:
    import torch

    out: dict[str, int] = {}
    for name in ("transformer", "text_encoder", "vae"):
        module = getattr(pipe, name)
        assert isinstance(module, torch.nn.Module)
        out[name] = sum(p.numel() for p in module.parameters())
    return out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def ensure_model(model_dir: Path, name: str, *, rebuild: bool = False) -> dict[str, Any]:
    """Builds and saves the random pipeline into ``model_dir`` unless a build of the same configs is there."""
    preset = PRESETS[name]
    digest = config_digest(preset)
    marker = model_dir / MARKER
    if model_dir.exists() and not rebuild:
        try:
            info = json.loads(marker.read_text("utf-8"))
            if info.get("config_sha256") == digest and (model_dir / "model_index.json").is_file():
                log(f"reusing the {name} pipeline in {model_dir} ({nbytes(info.get('disk_bytes', 0))})")
                return {**info, "reused": True}
        except (OSError, ValueError):
            pass
    if model_dir.exists():
        if not marker.exists() and any(model_dir.iterdir()):
            raise SystemExit(f"gpu-check: {model_dir} exists, is not empty and was not written by gpu-check")
        shutil.rmtree(model_dir)
    import torch

    device = preset["device"]
    log(f"building a randomly initialised {name} pipeline on {device} ...")
    t0 = time.monotonic()
    pipe = build_pipeline(preset, device)
    _sync(device)
    build_s = time.monotonic() - t0
    counts = param_counts(pipe)
    log(
        f"built in {build_s:.1f}s: "
        + ", ".join(f"{k} {count(v)}" for k, v in counts.items())
        + f" (total {count(sum(counts.values()))} params)"
    )
    tmp = model_dir.with_name(model_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    save_s = time.monotonic() - t0
    del pipe
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    size = dir_bytes(tmp)
    log(f"saved {nbytes(size)} in {save_s:.1f}s ({size / 1e9 / max(save_s, 1e-9):.2f} GB/s)")
    info = {
        "preset": name,
        "config_sha256": digest,
        "params": counts,
        "params_total": sum(counts.values()),
        "save_dtypes": preset["save_dtypes"],
        "build_seconds": round(build_s, 3),
        "save_seconds": round(save_s, 3),
        "disk_bytes": size,
        "torch": torch.__version__,
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", "utf-8")
    tmp.rename(model_dir)
    return {**info, "reused": False}


# --------------------------------------------------------------------------------------------------------------------
# In-process measurement through the wan adapter (the host's own code, without the socket)


def request_for(preset: dict[str, Any], size: str, steps: int) -> dict[str, Any]:
    w, h = parse_size(size)
    return {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "width": w,
        "height": h,
        "frames": frames_for(preset),
        "fps": int(preset["fps"]),
        "steps": steps,
        "guidance_scale": GUIDANCE,
        "image": None,
    }


def _peak_reset(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> tuple[int, int]:
    """(peak allocated, peak reserved) bytes on the GPU; on the CPU the process's max RSS, twice."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, rss


def _run_to_end(gen: Any, device: str, times: list[float] | None = None, stop_at: int | None = None) -> None:
    while not gen.done and (stop_at is None or gen.step_index < stop_at):
        t0 = time.monotonic()
        gen.step()
        gen.preview()  # what the host computes after every step (and a device sync)
        _sync(device)
        if times is not None:
            times.append(time.monotonic() - t0)


def measure(model_dir: Path, name: str, steps: int, sizes: list[str] | None = None) -> dict[str, Any]:
    """Loads ``model_dir`` with the wan adapter (as a host does) and runs every size: an uninterrupted run with a
    checkpoint halfway, then a resume from that checkpoint in the same process, compared with the first run."""
    import numpy as np

    from . import adapters, runtime
    from .adapters.base import ModelSpec
    from .request import parse_request

    preset = PRESETS[name]
    device = preset["device"]
    torch = runtime.setup_torch()
    spec = ModelSpec(id=f"{name}-random", adapter="wan", path=str(model_dir), dtype=preset["dtype"])
    _peak_reset(device)
    t0 = time.monotonic()
    model = adapters.load(spec, device)
    model.device_kind = device
    _sync(device)
    load_s = time.monotonic() - t0
    weights_peak = _peak(device)[0]
    log(f"loaded through the wan adapter in {load_s:.1f}s ({nbytes(model.memory_bytes)} of weights)")
    out: dict[str, Any] = {
        "load_seconds": round(load_s, 3),
        "weights_bytes": int(model.memory_bytes),
        "load_peak_bytes": weights_peak,
        "weights_hash": model.weights_hash,
        "runs": [],
    }
    for size in sizes or preset["sizes"]:
        raw = request_for(preset, size, steps)
        runtime.free_device_memory()
        _peak_reset(device)
        t0 = time.monotonic()
        gen = model.start(parse_request(raw, b""))
        _sync(device)
        start_s = time.monotonic() - t0
        k = max(1, gen.total_steps // 2)
        times: list[float] = []
        _run_to_end(gen, device, times, stop_at=k)
        t0 = time.monotonic()
        ckpt = gen.checkpoint()
        ckpt_s = time.monotonic() - t0
        _run_to_end(gen, device, times)
        finite = bool(torch.isfinite(gen.latents).all())
        final_a = gen.checkpoint()
        t0 = time.monotonic()
        video = gen.decode()
        _sync(device)
        decode_s = time.monotonic() - t0
        peak, reserved = _peak(device)
        frames_a = video.frames
        gen.close()
        del gen
        runtime.free_device_memory()
        t0 = time.monotonic()
        gen2 = model.resume(parse_request(raw, None, resume=True), ckpt)
        _sync(device)
        resume_s = time.monotonic() - t0
        _run_to_end(gen2, device)
        final_b = gen2.checkpoint()
        frames_b = gen2.decode().frames
        gen2.close()
        del gen2
        diff = int(np.abs(frames_a.astype(np.int16) - frames_b.astype(np.int16)).max()) if frames_a.size else 0
        steady = times[1:] or times
        run = {
            "size": size,
            "frames": int(frames_a.shape[0]),
            "width": int(frames_a.shape[2]),
            "height": int(frames_a.shape[1]),
            "steps": len(times),
            "start_seconds": round(start_s, 4),
            "step_seconds": [round(t, 4) for t in times],
            "first_step_seconds": round(times[0], 4),
            "seconds_per_step": round(sum(steady) / len(steady), 4),
            "checkpoint_step": k,
            "checkpoint_bytes": len(ckpt),
            "checkpoint_seconds": round(ckpt_s, 4),
            "resume_seconds": round(resume_s, 4),
            "decode_seconds": round(decode_s, 4),
            "peak_allocated_bytes": peak,
            "peak_reserved_bytes": reserved,
            "latents_finite": finite,
            "resume_checkpoint_equal": final_a == final_b,
            "resume_frames_equal": bool(np.array_equal(frames_a, frames_b)),
            "resume_frames_max_abs_diff": diff,
        }
        out["runs"].append(run)
        log(
            f"{size}: {run['seconds_per_step']:.3f} s/step (first {run['first_step_seconds']:.2f}s), "
            f"peak {peak / 2**30:.2f} GiB, checkpoint {len(ckpt) / 2**20:.1f} MiB in {ckpt_s:.3f}s, "
            f"decode {decode_s:.2f}s, in-process resume {'equal' if run['resume_frames_equal'] else f'max diff {diff}'}"
        )
    model.unload()
    return out


def prepare(work: Path, cpu_smoke: bool, steps: int | None, inproc: bool, rebuild: bool) -> dict[str, Any]:
    name = preset_name(cpu_smoke)
    preset = PRESETS[name]
    steps = steps or int(preset["steps"])
    out: dict[str, Any] = {"preset": name, "device": preset["device"], "dtype": preset["dtype"], "steps": steps}
    import torch

    out["torch"] = torch.__version__
    if preset["device"] == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu-check: torch sees no CUDA device")
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(0).total_memory)
    out["model"] = ensure_model(work / "model", name, rebuild=rebuild)
    out["model_dir"] = str((work / "model").resolve())
    if inproc:
        out["inproc"] = measure(work / "model", name, steps)
    return out


# --------------------------------------------------------------------------------------------------------------------
# drive: the end-to-end jobs through a running server and worker


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base = base.rstrip("/")
        self.key = key

    def _req(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        code, raw = self._req(method, path, body)
        try:
            return code, json.loads(raw or b"null")
        except ValueError:
            return code, {"raw": raw[:500].decode("utf-8", "replace")}

    def bytes(self, path: str) -> bytes:
        code, raw = self._req("GET", path, timeout=120.0)
        if code != 200:
            raise RuntimeError(f"GET {path}: HTTP {code}: {raw[:300]!r}")
        return raw


class EventTail(threading.Thread):
    """Reads a job's server-sent events as they come (the stream ends after a terminal event)."""

    def __init__(self, api: Api, job_id: str) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.job_id = job_id
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: str | None = None
        self.cond = threading.Condition()

    def run(self) -> None:
        req = urllib.request.Request(f"{self.api.base}/v1/videos/{self.job_id}/events")
        req.add_header("Authorization", f"Bearer {self.api.key}")
        req.add_header("Accept", "text/event-stream")
        try:
            with urllib.request.urlopen(req, timeout=900) as r:
                kind, data = None, None
                for raw in r:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        with contextlib.suppress(ValueError):
                            data = json.loads(line[5:].strip())
                    elif line == "":
                        if kind and isinstance(data, dict):
                            with self.cond:
                                self.events.append((kind, data))
                                self.cond.notify_all()
                        kind, data = None, None
        except Exception as e:  # noqa: BLE001 - reported by the waiter
            self.error = f"{type(e).__name__}: {e}"
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred: Any, timeout: float) -> tuple[str, dict[str, Any]] | None:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(*ev):
                        return ev
                left = end - time.monotonic()
                if left <= 0 or not self.is_alive():
                    return None
                self.cond.wait(min(left, 0.5))


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(stat.parent.name))
    return sorted(out)


def host_pids(worker_pid: int) -> list[int]:
    pids = []
    for c in children(worker_pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"videogen_host" in cmd:
            pids.append(c)
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return ""


def wait_model_ready(api: Api, model: str, worker_pid: int, timeout: float) -> dict[str, Any]:
    """Until a worker reports ``model`` warm; fails at once when it reports it unavailable or the worker dies."""
    end = time.monotonic() + timeout
    t0 = time.monotonic()
    last: Any = None
    while time.monotonic() < end:
        if not alive(worker_pid):
            raise RuntimeError("the worker exited while loading the model (see worker.log)")
        code, v = api.json("GET", f"/v1/models/{model}")
        last = v
        if code == 200 and isinstance(v, dict):
            w = (v.get("videogen") or {}).get("workers") or {}
            if w.get("unavailable"):
                raise RuntimeError(f"the worker could not load {model}: {w['unavailable']}")
            if w.get("warm"):
                return {"ready_seconds": round(time.monotonic() - t0, 3), "weights_hash": v["videogen"]["weights_hash"]}
        time.sleep(0.5)
    raise RuntimeError(f"{model} not warm on any worker after {timeout:.0f}s: {last}")


def _server_step_seconds(events: list[tuple[str, dict[str, Any]]]) -> float | None:
    """Median seconds between consecutive steps' progress events (server clock, last attempt: a resumed attempt's
    first interval would include the reload)."""
    attempt = max((d.get("attempt", 0) for _, d in events), default=0)
    seen: dict[int, int] = {}
    for kind, d in events:
        if kind == "progress" and d.get("attempt") == attempt and isinstance(d.get("step"), int) and "at_ms" in d:
            seen.setdefault(int(d["step"]), int(d["at_ms"]))
    gaps = sorted((seen[s + 1] - seen[s]) / 1000.0 for s in seen if s >= 1 and s + 1 in seen)
    if not gaps:
        return None
    mid = len(gaps) // 2
    return round(gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2, 4)


def host_loads(worker_log: Path | None, model: str) -> list[dict[str, Any]]:
    """Each host process's load of ``model``, from the worker's log: ``seconds`` the host's own report
    (``from_pretrained`` + ``to(device)``, after its weights hash), ``ready_seconds`` the worker's (from spawning
    the host: interpreter start and imports too)."""
    if worker_log is None or not worker_log.exists():
        return []
    own = re.compile(rf"loaded {re.escape(model)} \(\w+\) from \S+ in ([0-9.]+)s, weights \S+( \(cached hash\))?")
    ready = re.compile(r"\bsecs=([0-9.]+)")
    loads: list[dict[str, Any]] = []
    readies: list[float] = []  # the two lines of one load come in either order (the host's stderr is forwarded)
    for line in worker_log.read_text("utf-8", "replace").splitlines():
        m = own.search(line)
        if m:
            loads.append({"seconds": float(m.group(1)), "cached_hash": bool(m.group(2))})
        elif "model loaded" in line and f"model={model} " in line and (r := ready.search(line)):
            readies.append(round(float(r.group(1)), 3))
    for i, load in enumerate(loads):
        load["ready_seconds"] = readies[i] if i < len(readies) else None
    return loads


def decode_mp4(data: bytes, work: Path, name: str) -> Any:
    """RGB frames of an MP4 via ffmpeg (None without ffmpeg, or when it cannot decode the file)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    import numpy as np

    src = work / f"{name}.mp4"
    src.write_bytes(data)
    try:
        raw = subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(src), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            capture_output=True,
            check=True,
            timeout=300,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log(f"warning: ffmpeg could not decode {src}: {e}")
        return None
    return np.frombuffer(raw, dtype=np.uint8)


def run_job(api: Api, body: dict[str, Any], timeout: float, on_event: Any = None) -> dict[str, Any]:
    t0 = time.monotonic()
    code, v = api.json("POST", "/v1/videos", body)
    if code != 200:
        raise RuntimeError(f"submit {body['size']}: HTTP {code}: {v}")
    job_id = v["id"]
    tail = EventTail(api, job_id)
    tail.start()
    extra = on_event(tail) if on_event else {}
    done = tail.wait_for(lambda k, _d: k in ("completed", "failed", "cancelled", "expired"), timeout)
    wall = time.monotonic() - t0
    _, video = api.json("GET", f"/v1/videos/{job_id}")
    if done is None or done[0] != "completed":
        err = tail.error or (video.get("error") if isinstance(video, dict) else video)
        raise RuntimeError(f"job {job_id} ({body['size']}) did not complete in {timeout:.0f}s: {err}")
    mp4 = api.bytes(f"/v1/videos/{job_id}/content?variant=video")
    kinds = [k for k, _ in tail.events]
    resumed = [d for k, d in tail.events if k == "resumed"]
    return {
        "id": job_id,
        "size": body["size"],
        "status": "completed",
        "wall_seconds": round(wall, 3),
        "server_seconds_per_step": _server_step_seconds(tail.events),
        "attempts": video.get("attempt") if isinstance(video, dict) else None,
        "checkpoints": [d.get("step") for k, d in tail.events if k == "checkpoint"],
        "resumed_from_step": resumed[-1].get("from_step") if resumed else None,
        "events": kinds,
        "mp4_bytes": len(mp4),
        "mp4_sha256": hashlib.sha256(mp4).hexdigest(),
        "_mp4": mp4,
        **extra,
    }


def drive(args: argparse.Namespace) -> dict[str, Any]:
    name = preset_name(args.cpu_smoke)
    preset = PRESETS[name]
    steps = args.steps or int(preset["steps"])
    work = Path(args.work)
    api = Api(args.server, args.key)
    out: dict[str, Any] = {"model": args.model, "steps": steps}
    log(f"waiting for the worker to load {args.model} ...")
    out["worker_ready"] = wait_model_ready(api, args.model, args.worker_pid, args.load_timeout)
    out["worker_host_pids"] = host_pids(args.worker_pid)
    log(f"worker ready after {out['worker_ready']['ready_seconds']:.1f}s (host pids {out['worker_host_pids']})")

    def body(size: str) -> dict[str, Any]:
        return {
            "model": args.model,
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "size": size,
            "seconds": str(preset["seconds"]),
            "seed": SEED,
            "num_inference_steps": steps,
            "guidance_scale": GUIDANCE,
        }

    jobs = []
    for size in preset["sizes"]:
        log(f"job {size} (uninterrupted) ...")
        j = run_job(api, body(size), args.job_timeout)
        j["name"] = f"{size} uninterrupted"
        jobs.append(j)
        log(f"  done in {j['wall_seconds']:.1f}s, {j['mp4_bytes']} MP4 bytes")
    kill_size = preset["sizes"][-1]

    def kill_after_checkpoint(tail: EventTail) -> dict[str, Any]:
        ev = tail.wait_for(
            lambda k, d: (
                k in ("completed", "failed")
                or (k == "checkpoint" and isinstance(d.get("step"), int) and 2 <= d["step"] < steps)
            ),
            args.job_timeout,
        )
        if ev is None or ev[0] != "checkpoint":
            note = f"no checkpoint of step 2..{steps - 1} before the job ended ({ev and ev[0]}); "
            note += "raise VIDEOGEN_GPU_STEPS or VIDEOGEN_GPU_MIN_STEP_MS"
            return {"killed_host_pid": None, "kill_note": note}
        pids = host_pids(args.worker_pid)
        if len(pids) != 1:
            return {"killed_host_pid": None, "kill_note": f"expected one host process, found {pids}"}
        os.kill(pids[0], signal.SIGKILL)
        killed_ms = int(time.time() * 1000)
        log(f"  killed host pid {pids[0]} after the checkpoint of step {ev[1]['step']}")
        resumed = tail.wait_for(
            lambda k, _d: k in ("resumed", "completed", "failed"), args.job_timeout + args.load_timeout
        )
        latency = None
        if resumed is not None and resumed[0] == "resumed" and "at_ms" in resumed[1]:
            latency = round((int(resumed[1]["at_ms"]) - killed_ms) / 1000.0, 3)
        return {
            "killed_host_pid": pids[0],
            "killed_after_checkpoint_step": ev[1]["step"],
            "kill_to_resumed_seconds": latency,
        }

    log(f"job {kill_size} with its host process killed after a checkpoint ...")
    k = run_job(api, body(kill_size), args.job_timeout + args.load_timeout, on_event=kill_after_checkpoint)
    k["name"] = f"{kill_size} host killed"
    k["new_host_pids"] = host_pids(args.worker_pid)
    log(f"  done in {k['wall_seconds']:.1f}s, resumed from step {k['resumed_from_step']} (hosts {k['new_host_pids']})")
    ref = next(j for j in jobs if j["size"] == kill_size)
    resume: dict[str, Any] = {
        "size": kill_size,
        "killed_host_pid": k.get("killed_host_pid"),
        "killed_after_checkpoint_step": k.get("killed_after_checkpoint_step"),
        "kill_note": k.get("kill_note"),
        "kill_to_resumed_seconds": k.get("kill_to_resumed_seconds"),
        "resumed_from_step": k["resumed_from_step"],
        "new_host_pids": k["new_host_pids"],
        "exercised": bool(k.get("killed_host_pid")) and k["resumed_from_step"] is not None,
        "mp4_equal": k["_mp4"] == ref["_mp4"],
        "frames_max_abs_diff": None,
        "decoder": None,
    }
    a = decode_mp4(ref["_mp4"], work, "uninterrupted")
    b = decode_mp4(k["_mp4"], work, "resumed")
    if a is not None and b is not None:
        import numpy as np

        resume["decoder"] = "ffmpeg"
        if a.shape == b.shape:
            resume["frames_max_abs_diff"] = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0
        else:
            resume["frames_shape_mismatch"] = [int(a.size), int(b.size)]
        w, h = parse_size(kill_size)
        resume["decoded_frames"] = int(a.size // (w * h * 3))
    jobs.append(k)
    for j in jobs:
        (work / f"{j['id']}.mp4").write_bytes(j.pop("_mp4"))
    out["jobs"] = jobs
    out["resume"] = resume
    out["host_loads"] = host_loads(Path(args.worker_log) if args.worker_log else None, args.model)
    return out


# --------------------------------------------------------------------------------------------------------------------
# report


def _gib(n: Any) -> str:
    return f"{n / 2**30:.2f}" if isinstance(n, (int, float)) else "-"


def _f(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def summary(prep: dict[str, Any], e2e: dict[str, Any] | None) -> dict[str, Any]:
    s: dict[str, Any] = {
        "check": "videogen-gpu-check",
        "preset": prep.get("preset"),
        "device": prep.get("gpu") or prep.get("device"),
        "torch": prep.get("torch"),
        "dtype": prep.get("dtype"),
        "steps": prep.get("steps"),
        "params_total": prep.get("model", {}).get("params_total"),
        "model_disk_bytes": prep.get("model", {}).get("disk_bytes"),
        "model_save_seconds": prep.get("model", {}).get("save_seconds"),
        "model_reused": prep.get("model", {}).get("reused"),
    }
    inproc = prep.get("inproc")
    if inproc:
        s["load_seconds"] = inproc["load_seconds"]
        s["weights_bytes"] = inproc["weights_bytes"]
        s["sizes"] = {
            r["size"]: {
                k: r[k]
                for k in (
                    "frames",
                    "seconds_per_step",
                    "first_step_seconds",
                    "start_seconds",
                    "decode_seconds",
                    "peak_allocated_bytes",
                    "peak_reserved_bytes",
                    "checkpoint_bytes",
                    "checkpoint_seconds",
                    "resume_seconds",
                    "resume_frames_equal",
                    "resume_checkpoint_equal",
                    "resume_frames_max_abs_diff",
                    "latents_finite",
                )
            }
            for r in inproc["runs"]
        }
    if e2e:
        s["e2e"] = {
            "worker_ready_seconds": e2e["worker_ready"]["ready_seconds"],
            "host_load_seconds": [h["seconds"] for h in e2e.get("host_loads", [])],
            "host_ready_seconds": [h.get("ready_seconds") for h in e2e.get("host_loads", [])],
            "jobs": [
                {
                    k: j.get(k)
                    for k in ("name", "wall_seconds", "server_seconds_per_step", "mp4_bytes", "attempts", "checkpoints")
                }
                for j in e2e["jobs"]
            ],
            "resume": {k: v for k, v in e2e["resume"].items() if k != "new_host_pids"},
        }
    return s


def report(prep: dict[str, Any], e2e: dict[str, Any] | None) -> str:
    lines = []
    m = prep.get("model", {})
    title = f"videogen GPU check: {prep.get('preset')} (random weights), {prep.get('dtype')} on "
    title += str(prep.get("gpu") or prep.get("device")) + f", torch {prep.get('torch')}, {prep.get('steps')} steps"
    lines.append(title)
    lines.append(
        f"model: {count(m.get('params_total', 0))} params ("
        + ", ".join(f"{k} {count(v)}" for k, v in (m.get("params") or {}).items())
        + f"), {nbytes(m.get('disk_bytes', 0))} on disk, "
        + (
            f"reused (built {m.get('build_seconds')}s, saved {m.get('save_seconds')}s earlier)"
            if m.get("reused")
            else f"built {m.get('build_seconds')}s, saved {m.get('save_seconds')}s"
        )
    )
    inproc = prep.get("inproc")
    if inproc:
        lines.append(
            f"in process (wan adapter): load {inproc['load_seconds']:.1f}s, "
            f"weights {_gib(inproc['weights_bytes'])} GiB; "
            "peak = torch.cuda.max_memory_allocated / max_memory_reserved over start + steps + decode "
            "(CPU: max RSS)"
        )
        hdr = (
            f"{'size':<10} {'frames':>6} {'s/step':>8} {'1st s':>7} {'start s':>8} {'decode s':>9} {'peak GiB':>9} "
            f"{'rsvd GiB':>9} {'ckpt MiB':>9} {'ckpt s':>7} {'resume':>12}"
        )
        lines.append(hdr)
        for r in inproc["runs"]:
            res = (
                "equal"
                if r["resume_frames_equal"] and r["resume_checkpoint_equal"]
                else (f"diff {r['resume_frames_max_abs_diff']}")
            )
            lines.append(
                f"{r['size']:<10} {r['frames']:>6} {r['seconds_per_step']:>8.3f} {r['first_step_seconds']:>7.2f} "
                f"{r['start_seconds']:>8.2f} {r['decode_seconds']:>9.2f} {_gib(r['peak_allocated_bytes']):>9} "
                f"{_gib(r['peak_reserved_bytes']):>9} {r['checkpoint_bytes'] / 2**20:>9.2f} "
                f"{r['checkpoint_seconds']:>7.3f} {res:>12}"
            )
            if not r["latents_finite"]:
                lines.append(f"  warning: {r['size']} latents are not finite (random weights overflowed)")
    if e2e:
        loads = (
            ", ".join(
                f"{h['seconds']:.1f}s" + (f" ({h['ready_seconds']:.1f}s from spawn)" if h.get("ready_seconds") else "")
                for h in e2e.get("host_loads", [])
            )
            or "-"
        )
        lines.append(
            f"end to end (server + worker + host): worker ready after {e2e['worker_ready']['ready_seconds']:.1f}s; "
            f"host model loads {loads}"
        )
        lines.append(f"{'job':<22} {'wall s':>8} {'s/step':>8} {'attempts':>8} {'MP4 bytes':>10}  checkpoints")
        for j in e2e["jobs"]:
            lines.append(
                f"{j['name']:<22} {j['wall_seconds']:>8.1f} {_f(j['server_seconds_per_step']):>8} "
                f"{j['attempts']!s:>8} {j['mp4_bytes']:>10}  {j['checkpoints']}"
            )
        r = e2e["resume"]
        if r["exercised"]:
            lines.append(
                f"resume after a host kill ({r['size']}): killed pid {r['killed_host_pid']} after the checkpoint "
                f"of step {r['killed_after_checkpoint_step']}, resumed from step {r['resumed_from_step']} on pid(s) "
                f"{r['new_host_pids']} ({_f(r.get('kill_to_resumed_seconds'), '.1f')}s from kill to resumed); "
                f"MP4 {'byte-identical' if r['mp4_equal'] else 'DIFFERS'}"
                + (
                    f"; decoded frames max abs diff {r['frames_max_abs_diff']}"
                    if r["frames_max_abs_diff"] is not None
                    else "; frames not decoded (no ffmpeg)"
                    if r["decoder"] is None
                    else ""
                )
                + " vs the uninterrupted run"
            )
        else:
            lines.append(f"resume after a host kill: NOT exercised ({r.get('kill_note') or 'no resumed event'})")
    return "\n".join(lines)


def verdict(prep: dict[str, Any], e2e: dict[str, Any] | None, need_resume: bool, need_equal: bool) -> list[str]:
    """What makes the check fail: a missing end-to-end resume, and (``need_equal``) any resume that differs."""
    out = []
    for r in (prep.get("inproc") or {}).get("runs", []):
        if not r["latents_finite"]:
            out.append(f"{r['size']}: non-finite latents")
        if need_equal and not (r["resume_frames_equal"] and r["resume_checkpoint_equal"]):
            diff = r["resume_frames_max_abs_diff"]
            out.append(f"{r['size']}: the in-process resume differs (max abs frame diff {diff})")
    if e2e is None:
        if need_resume:
            out.append("no end-to-end results")
        return out
    r = e2e["resume"]
    if need_resume and not r["exercised"]:
        out.append(f"the host-kill resume did not happen: {r.get('kill_note') or 'no resumed event'}")
    if need_equal and r["exercised"] and not r["mp4_equal"]:
        out.append(f"the resumed {r['size']} MP4 differs from the uninterrupted one")
    return out


# --------------------------------------------------------------------------------------------------------------------
# CLI


def _setup_env(cpu_smoke: bool) -> None:
    """Before torch is imported: the host's device and determinism environment."""
    os.environ["VIDEOGEN_HOST_DEVICE"] = "cpu" if cpu_smoke else "cuda"
    from . import runtime

    runtime.set_environment()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videogen_host.gpu_check", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="check this interpreter's packages (and CUDA unless --cpu-smoke)")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--json", required=True, help="write the findings here")
    p = sub.add_parser("prepare", help="build + save the random pipeline, then measure it in process")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--work", required=True)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--no-inproc", action="store_true", help="skip the in-process measurement")
    p.add_argument("--rebuild", action="store_true", help="rebuild the model dir even when a matching one is there")
    p = sub.add_parser("drive", help="run the end-to-end jobs through a running server and worker")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--work", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--worker-pid", type=int, required=True)
    p.add_argument("--worker-log", default="", help="the worker's log (for the hosts' load times)")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--load-timeout", type=float, default=900.0)
    p.add_argument("--job-timeout", type=float, default=600.0)
    p = sub.add_parser("registry", help="print the [[models]] entry of the prepared model")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--id", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--steps", type=int, default=0)
    p = sub.add_parser("report", help="print the table and the JSON line")
    p.add_argument("--work", required=True, help="the dir with prepare.json")
    p.add_argument("--e2e", default="", help="the drive's JSON (default: WORK/e2e.json)")
    p.add_argument("--require-resume", action="store_true", help="exit 1 unless the host-kill resume happened")
    p.add_argument("--require-equal", action="store_true", help="exit 1 unless every resume is byte-identical")
    args = parser.parse_args(argv)

    if args.cmd == "probe":
        rep = probe(args.cpu_smoke)
        Path(args.json).write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n", "utf-8")
        pk = ", ".join(f"{k} {v}" for k, v in rep["packages"].items() if k not in rep["missing"])
        log(f"python {rep['python']} ({rep['executable']}): {pk or 'no runtime packages'}")
        if rep.get("gpu"):
            gib = rep["gpu_memory_bytes"] / 2**30
            log(f"CUDA {rep['torch_cuda']}: {rep['gpu_count']} x {rep['gpu']} ({gib:.0f} GiB)")
        for m in rep["mismatched"]:
            log(f"warning: {m}")
        for m in rep["missing"]:
            log(f"missing: {m} ({rep['packages'][m]})")
        for m in rep["problems"]:
            log(f"problem: {m}")
        return 0 if rep["ok"] else 2
    if args.cmd == "registry":
        preset = PRESETS[preset_name(args.cpu_smoke)]
        steps = args.steps or int(preset["steps"])
        sizes = ", ".join(f'"{s}"' for s in preset["sizes"])
        print(
            f'[[models]]\nid = "{args.id}"\nadapter = "wan"\npath = "{args.path}"\ndtype = "{preset["dtype"]}"\n'
            f"sizes = [{sizes}]\nseconds = [{preset['seconds']}]\nfps = {preset['fps']}\nsteps = {steps}\n"
            f"steps_max = {max(50, steps)}\nguidance_scale = {GUIDANCE}\nnegative_prompt = true\n"
        )
        return 0
    if args.cmd == "report":
        work = Path(args.work)
        prep = json.loads((work / "prepare.json").read_text("utf-8"))
        e2e_path = Path(args.e2e) if args.e2e else work / "e2e.json"
        e2e = json.loads(e2e_path.read_text("utf-8")) if e2e_path.exists() else None
        print(report(prep, e2e))
        print(json.dumps(summary(prep, e2e), sort_keys=True, separators=(",", ":")), flush=True)
        failures = verdict(prep, e2e, args.require_resume, args.require_equal)
        for f in failures:
            log(f"FAILED: {f}")
        return 1 if failures else 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "prepare":
        _setup_env(args.cpu_smoke)
        out = prepare(work, args.cpu_smoke, args.steps or None, not args.no_inproc, args.rebuild)
        (work / "prepare.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", "utf-8")
        return 0
    if args.cmd == "drive":
        try:
            out = drive(args)
        except RuntimeError as e:
            log(f"FAILED: {e}")
            return 1
        (work / "e2e.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", "utf-8")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
