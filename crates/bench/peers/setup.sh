#!/usr/bin/env bash
# Installs the queue libraries that `videogen bench dispatch --peers …` runs
# beside our PostgreSQL pipeline, at pinned versions, under target/peers/
# (git-ignored). Nothing of theirs is committed; the drivers in this folder
# are ours. Needs Node >= 14 with npm (graphile-worker) and CPython 3.11
# (pgqueuer, procrastinate), and the npm registry and PyPI.
#
#   bash crates/bench/peers/setup.sh            # all peers
#   bash crates/bench/peers/setup.sh graphile   # one (graphile | pgqueuer | procrastinate)
#
# PEERS_DIR overrides the install folder (default: <repo>/target/peers).
set -euo pipefail

# graphile-worker 0.18 wants Node >= 22.18; 0.17.3 is the newest that runs on Node 20.
GRAPHILE_WORKER=0.17.3
PG_NODE=8.23.1
PGQUEUER=1.6.0
ASYNCPG=0.32.0
PROCRASTINATE=3.10.0
PSYCOPG=3.3.9
PSYCOPG_POOL=3.3.3

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
dest="${PEERS_DIR:-$repo/target/peers}"
python="${PYTHON:-python3.11}"
mkdir -p "$dest"

only=("$@")
selected() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }

if selected graphile; then
  echo "graphile-worker $GRAPHILE_WORKER -> $dest/node"
  mkdir -p "$dest/node"
  cat > "$dest/node/package.json" <<JSON
{ "name": "videogen-bench-peers", "private": true,
  "dependencies": { "graphile-worker": "$GRAPHILE_WORKER", "pg": "$PG_NODE" } }
JSON
  (cd "$dest/node" && npm install --no-audit --no-fund --loglevel=error)
fi

venv() {
  local dir="$dest/$1"; shift
  [ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
}
if selected pgqueuer; then
  echo "pgqueuer $PGQUEUER -> $dest/pgqueuer"
  venv pgqueuer "pgqueuer==$PGQUEUER" "asyncpg==$ASYNCPG" "uvloop==0.23.0"
fi
if selected procrastinate; then
  echo "procrastinate $PROCRASTINATE -> $dest/procrastinate"
  venv procrastinate "procrastinate==$PROCRASTINATE" "psycopg[binary]==$PSYCOPG" "psycopg-pool==$PSYCOPG_POOL"
fi
echo "peers installed under $dest"
