#!/usr/bin/env bash
# Run the benchmark suite and write bench/RESULTS.md (+ bench/RESULTS.png).
#
#   scripts/bench.sh                 # full run (~5-10 min on 2 cores)
#   scripts/bench.sh --quick         # smoke run, tiny counts
#   scripts/bench.sh --install ...   # install the peers first (scripts/install-peers.sh)
#   scripts/bench.sh --only W1,W4 --systems shmlog-core,redis\ streams
#
# Uses the active venv (or .venv next to the repo if there is one). Peers that
# are not installed are skipped by the suite with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
if [ "${1:-}" = "--install" ]; then
    shift
    bash scripts/install-peers.sh
fi
exec python -m bench "$@"
