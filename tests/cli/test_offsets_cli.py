"""Kafka's promises on positions, through `shmlog`: a group that printed
nothing still commits where it stands; `groups describe` lists every
partition; `consume --offset` past the end says so."""

from __future__ import annotations

import subprocess
import sys

import shmlog

# the `broker` fixture (the data dir, its supervisor stopped after) is in conftest.py


def run(data_dir, *args, stdin=None):
    r = subprocess.run([sys.executable, "-m", "shmlog", *args, "--data-dir", str(data_dir)], input=stdin,
                       capture_output=True, timeout=120, cwd=str(data_dir.parent))
    r.out, r.err = r.stdout.decode(), r.stderr.decode()
    return r


def test_a_group_that_printed_nothing_resumes_where_it_stood(broker):
    assert run(broker, "topics", "create", "orders", "--partitions", "2").returncode == 0
    assert run(broker, "produce", "orders", stdin=b"before\n").returncode == 0
    r = run(broker, "consume", "orders", "--group", "cg4", "--timeout-ms", "300")
    assert r.returncode == 0 and r.out == "", r.err
    assert run(broker, "produce", "orders", stdin=b"x\ny\n").returncode == 0
    r = run(broker, "consume", "orders", "--group", "cg4", "--timeout-ms", "1000")
    assert r.returncode == 0, r.err
    assert sorted(r.out.split()) == ["x", "y"]


def test_groups_describe_lists_every_partition(broker):
    assert run(broker, "topics", "create", "gd", "--partitions", "3").returncode == 0
    assert run(broker, "produce", "gd", "--partition", "2", stdin=b"a\nb\n").returncode == 0
    with shmlog.connect(broker) as cluster:
        with cluster.consumer("gd", group="g", enable_auto_commit=False) as c:
            c.poll(timeout=0.5)
            c.commit(offsets={("gd", 0): 0})
    r = run(broker, "groups", "describe", "g")
    assert r.returncode == 0, r.err
    lines = r.out.strip().splitlines()
    rows = [ln.split() for ln in lines[lines.index(next(ln for ln in lines if ln.startswith("GROUP"))) + 1:]]
    # partitions 1 and 2 have no committed offset: "-", lag from the start
    assert [row[:6] for row in rows] == [["g", "gd", "0", "0", "0", "0"], ["g", "gd", "1", "-", "0", "0"],
                                         ["g", "gd", "2", "-", "2", "2"]]


def test_consume_from_an_offset_past_the_end_says_so(broker):
    assert run(broker, "topics", "create", "t4").returncode == 0
    assert run(broker, "produce", "t4", stdin=b"a\nb\nc\n").returncode == 0
    r = run(broker, "consume", "t4", "--partition", "0", "--offset", "99", "--timeout-ms", "300")
    assert r.returncode == 1 and r.out == "", (r.returncode, r.out, r.err)
    assert "'t4' partition 0" in r.err and "offset 99 is past the end offset 3" in r.err
    r = run(broker, "consume", "t4", "--partition", "0", "--offset", "3", "--timeout-ms", "300")
    assert r.returncode == 0 and r.out == "", r.err


def test_produce_skip_bad_lines_reports_them(broker):
    assert run(broker, "topics", "create", "ks").returncode == 0
    r = run(broker, "produce", "ks", "--key-separator", "=", stdin=b"k=v\nnokey\nk2=v2\n")
    assert r.returncode == 1 and "line 2" in r.err and "--skip-bad-lines" in r.err, r.err
    r = run(broker, "produce", "ks", "--key-separator", "=", "--skip-bad-lines", stdin=b"a=1\nbad\nb=2\n")
    assert r.returncode == 0, r.err
    assert "skipped line 2" in r.err and "2 messages sent to ks, 1 line(s) skipped" in r.err
    r = run(broker, "consume", "ks", "--from-beginning", "--print-key", "--max-messages", "3",
            "--timeout-ms", "5000")
    assert r.out.splitlines() == ["k\tv", "a\t1", "b\t2"]


def test_a_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-m", "shmlog", "topics", "list", "--data-dir", str(f)],
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and b"is not a directory" in r.stderr, r.stderr
