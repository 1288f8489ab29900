#!/usr/bin/env bash
# The model-host virtualenv (python/videogen_host and its pinned torch,
# diffusers, transformers; pytest and ruff), built once under target/ and
# reused while python/requirements.txt is unchanged. Prints its interpreter.
#   VIDEOGEN_HOST_VENV  where to build it (default target/host-venv)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VIDEOGEN_HOST_VENV:-target/host-venv}"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum python/requirements.txt python/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r python/requirements.txt >&2
  echo "$want" > "$STAMP"
fi
# Editable, so the tests run the checkout's package; no dependencies (pinned above).
if ! "$VENV/bin/python" -c 'import videogen_host, sys; sys.exit(0 if videogen_host.__file__.startswith(sys.argv[1]) else 1)' "$PWD/python" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e ./python >&2
fi
echo "$PWD/$VENV/bin/python"
