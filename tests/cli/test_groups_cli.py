"""`shmlog groups delete GROUP` (shmlog/cli/groups.py), as Kafka's
`kafka-consumer-groups --delete`: refused with one line naming the live
members while the group has any; afterwards the group and its committed
offsets are gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import shmlog

# the `broker` fixture (the data dir, its supervisor stopped after) is in conftest.py


def run(data_dir, *args, stdin=None):
    r = subprocess.run([sys.executable, "-m", "shmlog", *args, "--data-dir", str(data_dir)], input=stdin,
                       capture_output=True, timeout=120, cwd=str(data_dir.parent))
    r.out, r.err = r.stdout.decode(), r.stderr.decode()
    return r


def test_groups_delete_refuses_a_live_group_then_deletes_it(broker):
    assert run(broker, "topics", "create", "jobs").returncode == 0
    assert run(broker, "produce", "jobs", stdin=b"a\nb\n").returncode == 0
    with shmlog.connect(broker) as cluster:
        with cluster.consumer("jobs", group="workers", client_id="night-shift") as k:
            k.poll(timeout=0.5)
            r = run(broker, "groups", "delete", "workers")
            assert r.returncode == 1, (r.out, r.err)
            [line] = r.err.strip().splitlines()
            assert "workers" in line and "night-shift" in line and f"pid {os.getpid()}" in line, line
            assert "workers" in run(broker, "groups", "list").out.split()
    r = run(broker, "groups", "delete", "workers")
    assert r.returncode == 0, r.err
    assert r.out.strip() == "Deleted consumer group 'workers' (its committed offsets and state)."
    assert "workers" not in run(broker, "groups", "list").out.split()
    # gone: its offsets too, so a new consumer of that group starts from the beginning
    r = run(broker, "consume", "jobs", "--group", "workers", "--from-beginning", "--max-messages", "2",
            "--timeout-ms", "5000")
    assert r.out.split() == ["a", "b"], r.err


def test_groups_delete_of_an_unknown_group_says_so(broker):
    assert run(broker, "topics", "create", "jobs").returncode == 0
    r = run(broker, "groups", "delete", "ghost")
    assert r.returncode == 1 and "unknown group 'ghost'" in r.err, (r.returncode, r.err)


def test_groups_delete_json(broker):
    assert run(broker, "topics", "create", "jobs").returncode == 0
    assert run(broker, "produce", "jobs", stdin=b"a\n").returncode == 0
    r = run(broker, "consume", "jobs", "--group", "g", "--from-beginning", "--max-messages", "1",
            "--timeout-ms", "5000")
    assert r.out.split() == ["a"], r.err
    r = run(broker, "groups", "delete", "g", "--json")
    assert r.returncode == 0, r.err
    assert json.loads(r.out) == {"deleted": ["g"]}
