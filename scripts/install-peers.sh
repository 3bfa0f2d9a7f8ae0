#!/usr/bin/env bash
# Install the peer systems the benchmark suite (python -m bench) compares
# shmlog against: redis-server and nats-server (Debian packages) and the
# Python clients plus matplotlib (for the chart) into the active Python.
#
#   sudo -E bash scripts/install-peers.sh      # or as root, venv activated
#
# Anything that cannot be installed is reported and skipped; the bench then
# skips that peer with a stated reason. Nothing here is needed by shmlog.
set -uo pipefail

PY="${PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"; fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-peers: not root and no sudo: skipping apt packages" >&2
        SUDO="skip"
    fi
fi

if [ "$SUDO" != "skip" ] && command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -q || echo "install-peers: apt-get update failed" >&2
    pkgs=()
    for p in redis-server nats-server; do
        cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
        if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
            pkgs+=("$p")
        else
            echo "install-peers: $p is not available from apt here: skipping it" \
                 "(the bench skips that peer)" >&2
        fi
    done
    if [ "${#pkgs[@]}" -gt 0 ]; then
        # the packages' own services are not wanted: the bench starts its own
        # servers on unix sockets in temp dirs
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
            "${pkgs[@]}" || echo "install-peers: apt-get install ${pkgs[*]} failed" >&2
        for svc in redis-server nats-server; do
            if command -v systemctl >/dev/null 2>&1; then
                $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
            fi
        done
    fi
else
    echo "install-peers: no apt-get (or no root): install redis-server and nats-server yourself" >&2
fi

"$PY" -m pip install -q pyzmq faster-fifo redis hiredis nats-py matplotlib \
    || echo "install-peers: pip install of some peer clients failed" >&2

echo "install-peers: done; available:"
for b in redis-server nats-server; do
    printf '  %-14s %s\n' "$b" "$(command -v "$b" || echo missing)"
done
for m in zmq faster_fifo redis nats matplotlib; do
    printf '  %-14s %s\n' "$m" "$("$PY" -c "import $m; print(getattr($m, '__version__', 'ok'))" 2>/dev/null || echo missing)"
done
