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

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
