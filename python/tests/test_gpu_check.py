"""``videogen_host.gpu_check`` (the Python half of scripts/gpu-check.sh): its CPU smoke mode end to end in process
(build, save, load through the wan adapter, measure, resume), the report, and the full-size configs on the meta
device (no memory, no weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from videogen_host import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "videogen_host.gpu_check", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """``prepare --cpu-smoke`` once (a fresh process, as the script runs it): (work dir, env, its prepare.json)."""
    work = tmp_path_factory.mktemp("gpu-check")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "VIDEOGEN_HOST_THREADS": "2",
        "VIDEOGEN_HOST_CACHE_DIR": str(work / "hash-cache"),
    }
    r = _run("prepare", "--cpu-smoke", "--work", str(work), "--steps", "4", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, env, json.loads((work / "prepare.json").read_text())


Smoke = tuple[Path, dict[str, str], dict[str, Any]]


def test_cpu_smoke_prepare_measures_both_sizes_and_resumes_bit_exactly(smoke: Smoke) -> None:
    work, _, prep = smoke
    assert prep["preset"] == "tiny" and prep["device"] == "cpu" and prep["steps"] == 4
    model = prep["model"]
    assert model["reused"] is False and model["disk_bytes"] > 0
    assert set(model["params"]) == {"transformer", "text_encoder", "vae"}
    index = json.loads((work / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    sched = json.loads((work / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["flow_shift"], sched["use_flow_sigmas"], sched["prediction_type"]) == (3.0, True, "flow_prediction")
    runs = prep["inproc"]["runs"]
    assert [r["size"] for r in runs] == ["32x32", "64x48"]
    for r in runs:
        w, h = gpu_check.parse_size(r["size"])
        assert (r["width"], r["height"], r["frames"], r["steps"]) == (w, h, 17, 4)
        assert len(r["step_seconds"]) == 4 and r["seconds_per_step"] > 0
        assert r["checkpoint_step"] == 2 and r["checkpoint_bytes"] > 0
        assert r["peak_allocated_bytes"] > 0
        assert r["latents_finite"]
        # the CPU host is bit-exact: the resumed run's final checkpoint and frames equal the uninterrupted run's
        assert r["resume_checkpoint_equal"] and r["resume_frames_equal"] and r["resume_frames_max_abs_diff"] == 0


def test_cpu_smoke_reuses_the_model_and_reports(smoke: Smoke) -> None:
    work, env, _ = smoke
    r = _run("prepare", "--cpu-smoke", "--work", str(work), "--steps", "4", "--no-inproc", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reusing the tiny pipeline" in r.stderr
    assert json.loads((work / "prepare.json").read_text())["model"]["reused"] is True
    r = _run("report", "--work", str(work), "--require-equal", env=env)
    # no in-process runs and no end-to-end results: the table is short, the JSON line still there
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["check"] == "videogen-gpu-check" and summary["model_reused"] is True
    r = _run("report", "--work", str(work), "--require-resume", env=env)
    assert r.returncode == 1 and "no end-to-end results" in r.stderr


def _e2e(exercised: bool, equal: bool) -> dict[str, Any]:
    job = {"name": "64x48 uninterrupted", "wall_seconds": 1.0, "server_seconds_per_step": 0.1, "mp4_bytes": 10}
    job |= {"attempts": 1, "checkpoints": [2]}
    return {
        "worker_ready": {"ready_seconds": 1.5},
        "host_loads": [{"seconds": 0.2, "cached_hash": True}],
        "jobs": [job],
        "resume": {
            "size": "64x48",
            "exercised": exercised,
            "killed_host_pid": 123 if exercised else None,
            "killed_after_checkpoint_step": 2 if exercised else None,
            "kill_note": None if exercised else "no checkpoint before the job ended (completed)",
            "kill_to_resumed_seconds": 0.5,
            "resumed_from_step": 2 if exercised else None,
            "new_host_pids": [124],
            "mp4_equal": equal,
            "frames_max_abs_diff": 0 if equal else 3,
            "decoder": "ffmpeg",
        },
    }


def test_report_and_verdict(smoke: Smoke) -> None:
    prep = smoke[2]
    text = gpu_check.report(prep, _e2e(True, True))
    assert "32x32" in text and "64x48" in text and "equal" in text
    assert "byte-identical" in text and "max abs diff 0" in text
    assert gpu_check.verdict(prep, _e2e(True, True), True, True) == []
    assert gpu_check.verdict(prep, _e2e(True, False), True, False) == []  # the GPU run only reports a difference
    assert "differs" in gpu_check.verdict(prep, _e2e(True, False), True, True)[0]
    assert "NOT exercised" in gpu_check.report(prep, _e2e(False, True))
    assert "did not happen" in gpu_check.verdict(prep, _e2e(False, True), True, False)[0]
    s = gpu_check.summary(prep, _e2e(True, True))
    assert s["e2e"]["resume"]["mp4_equal"] is True and s["e2e"]["host_load_seconds"] == [0.2]
    json.dumps(s)


def test_registry_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["registry", "--id", "wan-x", "--path", "/m", "--steps", "6"]) == 0
    entry = tomllib.loads(capsys.readouterr().out)["models"][0]
    assert entry["sizes"] == ["832x480", "1280x720"] and entry["seconds"] == [1] and entry["fps"] == 16
    assert (entry["adapter"], entry["dtype"], entry["steps"], entry["path"]) == ("wan", "bfloat16", 6, "/m")
    assert gpu_check.frames_for(gpu_check.PRESETS[gpu_check.FULL]) == 17


def test_probe_accepts_this_interpreter_for_the_smoke_run() -> None:
    rep = gpu_check.probe(cpu_smoke=True)
    assert rep["ok"], rep
    assert rep["missing"] == [] and rep["install"] == []


def test_full_size_configs_build_on_the_meta_device() -> None:
    """The published Wan2.1-T2V-1.3B components, at full size without allocating: 1.42 B + 5.68 B + 0.13 B params."""
    pipe = gpu_check.build_pipeline(gpu_check.PRESETS[gpu_check.FULL], "meta")
    assert gpu_check.param_counts(pipe) == {
        "transformer": 1_418_996_800,
        "text_encoder": 5_680_910_336,
        "vae": 126_892_531,
    }
    t = pipe.transformer.config
    assert (t.num_layers, t.num_attention_heads * t.attention_head_dim, t.ffn_dim, t.text_dim) == (30, 1536, 8960, 4096)
    te = pipe.text_encoder.config
    assert (te.d_model, te.d_ff, te.num_layers, te.num_heads, te.vocab_size) == (4096, 10240, 24, 64, 256384)
    assert te.is_gated_act and te.dense_act_fn == "gelu_new"
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    assert pipe.scheduler.config.flow_shift == 3.0
