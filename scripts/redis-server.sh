#!/usr/bin/env bash
# Runs a throwaway Redis for trying multi-node setups locally (nothing is
# persisted: Redis is only an accelerator, the store keeps every job and event).
# Usage: scripts/redis-server.sh [port]   (default 6379, loopback only)
set -euo pipefail
port="${1:-6379}"
bin="$(command -v redis-server || echo /usr/bin/redis-server)"
if [ ! -x "$bin" ]; then
  echo "redis-server not found; install Debian's package: apt-get install redis-server" >&2
  exit 1
fi
echo "redis://127.0.0.1:${port}/" >&2
exec "$bin" --port "$port" --bind 127.0.0.1 --save "" --appendonly no
