#!/usr/bin/env bash
# The test command (README.md): formatting, lints, and every test in the
# workspace, including the official OpenAI Python SDK driving a real server.
set -euo pipefail
cd "$(dirname "$0")/.."

# Virtualenv with the pinned official `openai` SDK and pytest.
VENV="${VIDEOGEN_SDK_VENV:-target/sdk-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import openai, pytest' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/sdk/requirements.txt
fi
export VIDEOGEN_SDK_PYTHON="$PWD/$VENV/bin/python"

# The model host (python/videogen_host) in its own virtualenv: pinned torch
# (CPU is enough), diffusers, transformers; its lints (ruff: style, imports,
# annotations) and its own tests.
VIDEOGEN_HOST_PYTHON="$(bash scripts/host-venv.sh)"
export VIDEOGEN_HOST_PYTHON
"$VIDEOGEN_HOST_PYTHON" -m ruff check python
"$VIDEOGEN_HOST_PYTHON" -m ruff format --check python
(cd python && "$VIDEOGEN_HOST_PYTHON" -m pytest -q -p no:cacheprovider)

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Unused dependencies: cargo-machete, pinned, built once under target/tools.
MACHETE="target/tools/bin/cargo-machete"
if [ ! -x "$MACHETE" ] || ! "$MACHETE" --version 2>/dev/null | grep -q '0.9.2'; then
  cargo install -q --locked cargo-machete --version 0.9.2 --root target/tools
fi
"$MACHETE"
cargo test --workspace --locked
