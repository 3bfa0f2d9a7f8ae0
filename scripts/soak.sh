#!/usr/bin/env bash
# The reliability run behind RELIABILITY.md's figures.
#
#   scripts/soak.sh                # 10-minute soak, a kill every 2 s, then
#                                  # 20 power losses, the disk faults (root)
#                                  # and the long fuzzers; JSON in soak-*.json
#   scripts/soak.sh --minutes 1    # any `shmlog soak` option overrides
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python -m shmlog soak --minutes 10 --kill-every 2 --json "$@" > "soak-$stamp.json"
python -m shmlog soak --seconds 0 --power-loss 20 --disk-faults --fuzz --json "$@" > "soak-faults-$stamp.json"
echo "figures in soak-$stamp.json and soak-faults-$stamp.json"
