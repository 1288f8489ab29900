#!/usr/bin/env bash
# GPU check: a full-size, randomly initialised Wan2.1-T2V-1.3B (diffusers WanPipeline: 1.42 B transformer,
# 5.68 B UMT5-XXL text encoder, 0.13 B VAE; bf16) on one NVIDIA GPU, through the real videogen server, a
# `videogen worker --gpus 0` and its python model host. No network is needed or used.
#
#   1. checks the videogen binary and a Python with CUDA torch + the pinned diffusers/transformers/... (offline
#      install from VIDEOGEN_WHEELS when something is missing; exit 2 when it cannot be had);
#   2. builds the random pipeline from its published configs on the GPU and save_pretrained's it (about 14.7 GB:
#      transformer and text encoder in bf16, VAE in fp32) into $WORK/model, reused by later runs;
#   3. loads it through the wan adapter in process and runs 832x480 and 1280x720 (17 frames, VIDEOGEN_GPU_STEPS steps):
#      s/step, peak GPU memory (torch.cuda.max_memory_allocated), checkpoint size/time, in-process resume;
#   4. starts `videogen serve` with a [[models]] entry for it and `videogen worker --gpus 0 --host-python ...`,
#      runs both sizes as jobs, then 1280x720 again with the host process SIGKILLed after a checkpoint, so the
#      worker resumes it on a fresh host; compares that MP4 with the uninterrupted one (bytes; decoded frames'
#      max abs difference when ffmpeg is there);
#   5. prints a table and, as its last line, one JSON object. Expect a few minutes (most of it: build, save and
#      three model loads).
#
# Usage: scripts/gpu-check.sh [--cpu-smoke] [--rebuild] [--no-inproc]
#   --cpu-smoke   the same plumbing with tiny configs on the CPU, in about a minute (no GPU needed)
#   --rebuild     rebuild the model dir even when a matching one exists
#   --no-inproc   skip step 3 (the end-to-end part still reports equality)
# Environment:
#   VIDEOGEN_GPU_PYTHON  interpreter with torch (CUDA) and the pins of python/requirements.txt
#                        (default: the first that qualifies of target/gpu-venv/bin/python, target/host-venv/bin/python,
#                        python3, /opt/conda/bin/python, /usr/local/bin/python3, /usr/bin/python3)
#   VIDEOGEN_WHEELS      directory of `pip download`-ed wheels to install missing packages from, offline
#   VIDEOGEN_BIN         the videogen binary (default: target/release/videogen, else target/debug/videogen)
#   VIDEOGEN_GPU_WORKDIR work dir (default target/gpu-check, or target/gpu-check-smoke)
#   VIDEOGEN_GPU_STEPS   denoising steps per job (default 8; the worker checkpoints every 2)
#   VIDEOGEN_GPU_MIN_STEP_MS  least wall time of a host step (default 0 on the GPU, 300 for --cpu-smoke): widens
#                        the window for the host kill
#   VIDEOGEN_GPU_DEVICE  the GPU index for `--gpus` (default 0)
# Exit status: 0 passed, 1 a step failed (the message says which; logs under $WORK/run), 2 a prerequisite is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=gpu
REBUILD=()
INPROC=()
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) MODE=cpu ;;
    --rebuild) REBUILD=(--rebuild) ;;
    --no-inproc) INPROC=(--no-inproc) ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu-check: unknown argument $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

SMOKE=()
if [ "$MODE" = cpu ]; then
  SMOKE=(--cpu-smoke)
  WORK="${VIDEOGEN_GPU_WORKDIR:-$ROOT/target/gpu-check-smoke}"
  MIN_STEP_MS="${VIDEOGEN_GPU_MIN_STEP_MS:-300}"
  MODEL_ID="wan-tiny-random"
  LOAD_TIMEOUT=300
  JOB_TIMEOUT=300
else
  WORK="${VIDEOGEN_GPU_WORKDIR:-$ROOT/target/gpu-check}"
  MIN_STEP_MS="${VIDEOGEN_GPU_MIN_STEP_MS:-0}"
  MODEL_ID="wan2.1-t2v-1.3b-random"
  LOAD_TIMEOUT=900
  JOB_TIMEOUT=600
fi
STEPS="${VIDEOGEN_GPU_STEPS:-8}"
RUN="$WORK/run"
STAGE="setup"
SERVER_PID=""
WORKER_PID=""
CHILD="" # the long-running python step in progress (run in the background so signals reach the trap at once)
LOGS=0 # whether this run wrote server/worker logs (tailed on failure)
T0=$SECONDS

say() { printf 'gpu-check: %s\n' "$*" >&2; }
stage() {
  STAGE="$*"
  say "== $STAGE ($((SECONDS - T0))s)"
}
missing() {
  say "MISSING: $*"
  STAGE="prerequisites (nothing was run)"
  exit 2
}

# Children of process $1, from /proc (no pgrep on minimal images).
children_of() {
  local parent="$1" stat text ppid p
  for stat in /proc/[0-9]*/stat; do
    { read -r text <"$stat"; } 2>/dev/null || continue
    read -r _ ppid _ <<<"${text##*) }"
    if [ "$ppid" = "$parent" ]; then
      p="${stat#/proc/}"
      echo "${p%/stat}"
    fi
  done
}

# An absolute path that keeps the last symlink (a venv's bin/python must stay the venv's).
abs_path() {
  case "$1" in
    /*) echo "$1" ;;
    */*) echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" ;;
    *) command -v "$1" ;;
  esac
}

stop_pid() { # SIGTERM, then SIGKILL after $2 seconds
  local pid="$1" grace="${2:-5}" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Runs a long step as a background child and waits for it: bash runs traps only between foreground commands,
# but at once during `wait`, so an INT or TERM stops the check (and its processes) promptly.
run_child() {
  local rc=0
  "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

cleanup() {
  local rc=$? hosts="" h
  set +e
  trap - EXIT INT TERM
  [ -n "$CHILD" ] && stop_pid "$CHILD" 3
  if [ -n "$WORKER_PID" ]; then
    hosts="$(children_of "$WORKER_PID")"
    kill -KILL "$WORKER_PID" 2>/dev/null
    wait "$WORKER_PID" 2>/dev/null
    for h in $hosts; do kill -KILL "$h" 2>/dev/null; done
  fi
  [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID" 5
  if [ "$rc" -ne 0 ]; then
    say "FAILED during: $STAGE (exit $rc, after $((SECONDS - T0))s)"
    local f
    for f in "$RUN/server.log" "$RUN/worker.log"; do
      if [ "$LOGS" = 1 ] && [ -s "$f" ]; then
        say "--- last lines of $f"
        tail -n 30 "$f" >&2
      fi
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------------
stage "the videogen binary"
BIN="${VIDEOGEN_BIN:-}"
if [ -z "$BIN" ]; then
  for c in target/release/videogen target/debug/videogen; do
    if [ -x "$ROOT/$c" ]; then
      BIN="$ROOT/$c"
      break
    fi
  done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || missing "no videogen binary: run 'cargo build --release -p videogen' first (or set VIDEOGEN_BIN)"
"$BIN" --version >/dev/null 2>&1 || missing "$BIN does not run on this machine"
WORKER_HELP="$("$BIN" worker --help 2>/dev/null || true)"
for flag in --models --gpus --host-python; do
  grep -q -- "$flag" <<<"$WORKER_HELP" || missing "$BIN is too old: 'videogen worker' has no $flag (rebuild it)"
done
say "binary: $BIN ($("$BIN" --version 2>/dev/null))"

# ---------------------------------------------------------------------------------------------------------------------
stage "the Python environment"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK"
PROBE="$WORK/probe.json"

probe() { "$1" -m videogen_host.gpu_check probe "${SMOKE[@]}" --json "$PROBE"; }
probe_field() { "$PY" -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print(" ".join(v) if isinstance(v, list) else v)' "$PROBE" "$1"; }

PY="${VIDEOGEN_GPU_PYTHON:-}"
PROBE_OK=0
if [ -n "$PY" ]; then
  command -v "$PY" >/dev/null 2>&1 || missing "VIDEOGEN_GPU_PYTHON=$PY is not an executable"
  PY="$(abs_path "$PY")"
  if probe "$PY"; then PROBE_OK=1; fi
else
  seen=" "
  TORCH_PY=""
  USABLE_TORCH='import json, sys; r = json.load(open(sys.argv[1]))
print(int("torch" not in r["missing"] and (sys.argv[2] == "cpu" or bool(r.get("cuda_available")))))'
  for c in "$ROOT/target/gpu-venv/bin/python" "$ROOT/target/host-venv/bin/python" python3 \
    /opt/conda/bin/python /usr/local/bin/python3 /usr/bin/python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    c="$(abs_path "$c")"
    case "$seen" in *" $c "*) continue ;; esac # python3 found again under its own path
    seen="$seen$c "
    [ -n "$PY" ] || PY="$c"
    if probe "$c"; then
      PY="$c"
      PROBE_OK=1
      break
    fi
    # the best base for an offline install: the first with a usable torch (the one big dependency)
    if [ -z "$TORCH_PY" ] && [ "$("$c" -c "$USABLE_TORCH" "$PROBE" "$MODE" 2>/dev/null)" = 1 ]; then
      TORCH_PY="$c"
    fi
  done
  [ -n "$PY" ] || missing "no python3 on this machine (set VIDEOGEN_GPU_PYTHON)"
  if [ "$PROBE_OK" != 1 ]; then
    PY="${TORCH_PY:-$PY}"
    say "no interpreter qualifies; going on with $PY$([ -n "$TORCH_PY" ] && echo " (it has a usable torch)")"
    probe "$PY" 2>/dev/null || true # its findings, for the offline install below
  fi
fi

WANT="$(probe_field install)"
if [ -n "$WANT" ] && [ -n "${VIDEOGEN_WHEELS:-}" ]; then
  [ -d "$VIDEOGEN_WHEELS" ] && compgen -G "$VIDEOGEN_WHEELS/*.whl" >/dev/null ||
    missing "VIDEOGEN_WHEELS=$VIDEOGEN_WHEELS holds no .whl files"
  if [ "$(probe_field venv)" != True ]; then
    # not a virtualenv: install into an overlay venv that still sees its packages (its CUDA torch, say)
    say "creating target/gpu-venv on top of $PY (--system-site-packages)"
    "$PY" -m venv --system-site-packages "$ROOT/target/gpu-venv" ||
      missing "'$PY -m venv' failed (install python3-venv, or set VIDEOGEN_GPU_PYTHON to a virtualenv's python)"
    PY="$ROOT/target/gpu-venv/bin/python"
  fi
  say "installing offline from $VIDEOGEN_WHEELS into $PY: $WANT"
  # shellcheck disable=SC2086 # the requirement list is space-separated on purpose
  if "$PY" -m pip install --disable-pip-version-check --no-index --find-links "$VIDEOGEN_WHEELS" $WANT >&2; then
    PROBE_OK=0
    if probe "$PY"; then PROBE_OK=1; fi
  elif [ "$PROBE_OK" = 1 ]; then
    say "warning: the offline install failed; going on with the versions already there"
  else
    missing "the offline install from $VIDEOGEN_WHEELS failed (see pip's message above)"
  fi
fi
if [ "$PROBE_OK" != 1 ]; then
  PYV="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo 3.11)"
  cat >&2 <<EOF
gpu-check: MISSING: $PY cannot run the check (details above and in $PROBE).
  Needed: Python >= 3.11 with $([ "$MODE" = gpu ] && echo "a CUDA build of torch that sees the GPU, and ")the pins of
  python/requirements.txt: diffusers, transformers, tokenizers, safetensors, numpy (torch: any CUDA 2.x build).
  This machine has no network. Either point VIDEOGEN_GPU_PYTHON at an interpreter that has them, or download
  the wheels on a machine with internet, for Python $PYV on x86-64 Linux:
    pip download -d wheels --only-binary=:all: --python-version $PYV --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        diffusers==0.42.1 transformers==5.25.0 tokenizers==0.23.3 safetensors==0.8.0 numpy==2.4.6
    (no CUDA torch here either: add torch==2.15.0 -- about 3-4 GB with its nvidia-* wheels)
  carry the directory along and run again with VIDEOGEN_WHEELS=wheels.
EOF
  STAGE="prerequisites (nothing was run)"
  exit 2
fi
say "python: $PY"

# ---------------------------------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ] && { [ ! -f "$WORK/model/model_index.json" ] || [ ${#REBUILD[@]} -gt 0 ]; }; then
  avail_kb="$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')"
  if [ "${avail_kb:-0}" -lt $((17 * 1024 * 1024)) ]; then
    say "FAILED: $WORK has $((${avail_kb:-0} / 1024 / 1024)) GiB free; the model needs about 15 GB (set VIDEOGEN_GPU_WORKDIR)"
    exit 1
  fi
fi
stage "build/save the random pipeline$([ ${#INPROC[@]} -eq 0 ] && echo ", measure it in process")"
export VIDEOGEN_HOST_CACHE_DIR="$WORK/hash-cache"
export VIDEOGEN_HOST_LOG="${VIDEOGEN_HOST_LOG:-INFO}"
if [ "$MODE" = cpu ]; then
  export VIDEOGEN_HOST_THREADS="${VIDEOGEN_HOST_THREADS:-2}"
fi
run_child "$PY" -m videogen_host.gpu_check prepare "${SMOKE[@]}" --work "$WORK" --steps "$STEPS" "${REBUILD[@]}" "${INPROC[@]}"
MODEL_DIR="$WORK/model"

# ---------------------------------------------------------------------------------------------------------------------
stage "start videogen serve"
rm -rf "$RUN"
mkdir -p "$RUN"
LOGS=1
"$PY" -m videogen_host.gpu_check registry "${SMOKE[@]}" --id "$MODEL_ID" --path "$MODEL_DIR" --steps "$STEPS" >"$RUN/videogen.toml"
TOKEN="vgw_$("$PY" -c 'import secrets; print(secrets.token_hex(24))')"
VIDEOGEN_WORKER_TOKEN="$TOKEN" RUST_LOG="${RUST_LOG:-info}" "$BIN" serve \
  --data-dir "$RUN/server" --listen 127.0.0.1:0 --workers 0 --config "$RUN/videogen.toml" \
  --housekeeping-secs 0.2 --retry-backoff 100ms >"$RUN/server.log" 2>&1 &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 600); do
  ADDR="$(sed -n 's/^videogen listening on \([^ ]*\).*/\1/p' "$RUN/server.log" | head -n 1)"
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || {
    say "videogen serve exited"
    exit 1
  }
  sleep 0.1
done
[ -n "$ADDR" ] || {
  say "videogen serve did not report its address within 60 s"
  exit 1
}
case "$ADDR" in http://* | https://*) BASE="$ADDR" ;; *) BASE="http://$ADDR" ;; esac
KEY="$("$BIN" keys create --tenant gpu-check --tier paid --data-dir "$RUN/server" 2>>"$RUN/server.log" | tail -n 1)"
[ -n "$KEY" ] || {
  say "could not create an API key"
  exit 1
}
say "server: $BASE (pid $SERVER_PID)"

stage "start videogen worker (model load)"
WARGS=(worker --server "$BASE" --name gpu-check --config "$RUN/videogen.toml" --models "$MODEL_ID"
  --host-python "$PY" --checkpoint-every-steps 2)
if [ "$MODE" = gpu ]; then
  WARGS+=(--gpus "${VIDEOGEN_GPU_DEVICE:-0}")
else
  WARGS+=(--host-threads "$VIDEOGEN_HOST_THREADS")
fi
VIDEOGEN_WORKER_TOKEN="$TOKEN" VIDEOGEN_HOST_MIN_STEP_MS="$MIN_STEP_MS" RUST_LOG="${RUST_LOG:-info}" \
  "$BIN" "${WARGS[@]}" >"$RUN/worker.log" 2>&1 &
WORKER_PID=$!
say "worker: pid $WORKER_PID, log $RUN/worker.log"

stage "end-to-end jobs (each size, then the largest again with its host killed after a checkpoint)"
run_child "$PY" -m videogen_host.gpu_check drive "${SMOKE[@]}" --work "$RUN" --server "$BASE" --key "$KEY" \
  --model "$MODEL_ID" --worker-pid "$WORKER_PID" --worker-log "$RUN/worker.log" --steps "$STEPS" \
  --load-timeout "$LOAD_TIMEOUT" --job-timeout "$JOB_TIMEOUT"

stage "stop the worker and the server"
HOSTS="$(children_of "$WORKER_PID")"
stop_pid "$WORKER_PID" 30
for h in $HOSTS; do stop_pid "$h" 5; done
WORKER_PID=""
stop_pid "$SERVER_PID" 10
SERVER_PID=""

stage "report"
REQ=(--require-resume)
[ "$MODE" = cpu ] && REQ+=(--require-equal) # the CPU host is bit-exact by contract; the GPU's is only reported
say "total $((SECONDS - T0))s; work dir $WORK"
"$PY" -m videogen_host.gpu_check report --work "$WORK" --e2e "$RUN/e2e.json" "${REQ[@]}" | tee "$WORK/report.txt"
