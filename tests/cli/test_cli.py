"""The `shmlog` command line, each command through a real subprocess
against a real supervisor in the test's data dir.

Exit codes: 0 ok, 1 error with one line on stderr, 2 usage. Every test
stops the supervisor it caused (the `broker` fixture), and the data_dir
fixture fails the test if a supervisor or a region outlives it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import shmlog


@pytest.fixture
def broker(data_dir):
    """The test's data dir; whatever supervisor the CLI started is stopped."""
    yield data_dir
    try:
        c = shmlog.connect(data_dir, start=False)
    except shmlog.BrokerNotRunning:
        return
    c.shutdown()


def cli(data_dir, *args, stdin=None, timeout=120, data_dir_flag=True):
    cmd = [sys.executable, "-m", "shmlog", *args]
    if data_dir_flag:
        cmd += ["--data-dir", str(data_dir)]
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, cwd=str(data_dir.parent))
    r.out = r.stdout.decode()
    r.err = r.stderr.decode()
    return r


def assert_error(r, *words):
    """Exit 1 with exactly one line on stderr that names every word."""
    assert r.returncode == 1, (r.returncode, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---------------------------------------------------------------- usage
def test_help_lists_every_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "shmlog", "--help"], capture_output=True, timeout=60)
    assert r.returncode == 0
    for cmd in ("serve", "topics", "produce", "consume", "groups", "perf", "dump", "top", "stats", "demo"):
        assert cmd in r.stdout.decode(), cmd


def _every_parser(parser, path=()):
    """(command path, parser) for the top-level parser and every subcommand under it."""
    import argparse
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, path + (name,))


def test_every_command_renders_its_help():
    # argparse %-expands help text: a stray % in one option's help (say a --format field
    # list) makes that command's --help raise instead of printing
    from shmlog.cli import build_parser
    paths = []
    for path, parser in _every_parser(build_parser()):
        text = parser.format_help()
        assert "usage:" in text, path
        paths.append(path)
    assert ("consume",) in paths and ("groups", "reset-offsets") in paths


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["topics", "create"],                                  # NAME missing
    ["topics", "create", "t", "--config", "novalue"],      # not KEY=VALUE
    ["topics", "create", "t", "--partitions", "many"],
    ["consume"],                                           # TOPIC missing
    ["consume", "t", "--max-messages", "-3"],
    ["groups", "reset-offsets", "g", "--topic", "t"],      # no --to-*
    ["groups", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--to-latest"],
    ["perf", "produce", "--topic", "t"],                   # --num-records missing
    ["stats", "--bogus"],
])
def test_bad_usage_exits_2(data_dir, args):
    r = cli(data_dir, *args)
    assert r.returncode == 2, (r.out, r.err)
    assert "usage:" in r.err
    assert not data_dir.exists(), "a usage error must not start a supervisor"


@pytest.mark.parametrize("args", [["stats"], ["topics", "list"], ["topics", "create", "t"], ["consume", "t"],
                                  ["groups", "list"], ["top", "--iterations", "1"], ["demo", "--seconds", "1"]])
def test_no_start_without_a_broker(data_dir, args):
    r = cli(data_dir, *args, "--no-start")
    assert_error(r, "no supervisor")
    assert not (data_dir / "shmlog.sock").exists()


def test_no_start_with_a_broker_connects(broker):
    with shmlog.connect(broker) as c:
        c.create_topic("present")
        r = cli(broker, "topics", "list", "--no-start")
    assert r.returncode == 0, r.err
    assert r.out.split() == ["present"]


def test_data_dir_from_the_environment_and_before_the_action(broker):
    env = {**os.environ, "SHMLOG_DATA_DIR": str(broker)}
    r = subprocess.run([sys.executable, "-m", "shmlog", "topics", "create", "fromenv"], env=env,
                       capture_output=True, timeout=120, cwd=str(broker.parent))
    assert r.returncode == 0, r.stderr
    r = cli(broker, "topics", "--data-dir", str(broker), "list", data_dir_flag=False)
    assert r.returncode == 0, r.err
    assert r.out.split() == ["fromenv"]
    assert not (broker.parent / "shmlog-data").exists()


# ---------------------------------------------------------------- errors
def test_unknown_topic_is_named(broker):
    assert_error(cli(broker, "topics", "describe", "ghost"), "ghost")
    assert_error(cli(broker, "consume", "ghost", "--timeout-ms", "100"), "ghost")
    assert_error(cli(broker, "produce", "ghost", stdin=b"x\n"), "ghost")
    assert_error(cli(broker, "topics", "delete", "ghost"), "ghost")
    assert_error(cli(broker, "perf", "produce", "--topic", "ghost", "--num-records", "10"), "ghost")
    assert cli(broker, "topics", "delete", "ghost", "--if-exists").returncode == 0
    assert cli(broker, "topics", "create", "real", "--partitions", "2").returncode == 0
    assert_error(cli(broker, "produce", "real", "--partition", "5", stdin=b"x\n"), "real", "5")


def test_bad_config_values(broker):
    assert_error(cli(broker, "topics", "create", "t", "--config", "partitions=abc"), "partitions")
    assert_error(cli(broker, "topics", "create", "t", "--config", "storage=floppy"), "storage")
    assert_error(cli(broker, "topics", "create", "t", "--config", "colour=blue"), "colour")
    assert_error(cli(broker, "topics", "create", "bad name"), "bad name")
    assert cli(broker, "topics", "create", "t").returncode == 0
    assert_error(cli(broker, "topics", "create", "t"), "t", "exists")
    assert cli(broker, "topics", "create", "t", "--if-not-exists").returncode == 0
    assert_error(cli(broker, "topics", "alter", "t", "--config", "chunk_count=8"), "chunk_count")
    assert_error(cli(broker, "topics", "alter", "t", "--config", "retention_ms=-1"), "retention_ms")
    assert_error(cli(broker, "topics", "alter", "t", "--partitions", "1"), "t")


def test_dump_errors(broker, tmp_path):
    r = cli(broker, "dump", str(tmp_path / "missing.log"), data_dir_flag=False)
    assert_error(r, "missing.log")


def test_dump_prints_batches_and_fails_on_a_bad_crc(broker):
    with shmlog.connect(broker) as c:
        c.create_topic("seg", partitions=1, storage="disk")
        with c.producer() as p:
            p.send_batch("seg", [b"v%03d" % i for i in range(100)], partition=0)
            p.send_batch("seg", [b"w%03d" % i for i in range(50)], partition=0)
            p.flush(durable=True)
    segs = sorted((broker / "topics" / "seg" / "0").glob("*.log"))
    assert segs, "no segment file was written"
    seg = segs[0]
    r = cli(broker, "dump", str(seg), data_dir_flag=False)
    assert r.returncode == 0, r.err
    lines = r.out.strip().splitlines()
    assert lines[0] == f"Dumping {seg}" and lines[-1] == "2 batches"
    assert lines[1].startswith("offset: 0 position: 0 count: 100 ") and "crc_valid: true" in lines[1]
    assert lines[2].startswith("offset: 100 ") and "count: 50" in lines[2]
    batches = json.loads(cli(broker, "dump", str(seg), "--json", data_dir_flag=False).out)
    assert [(b["offset"], b["count"], b["crc_valid"]) for b in batches] == [(0, 100, True), (100, 50, True)]
    # flip one byte of the second batch's payload
    data = bytearray(seg.read_bytes())
    pos = batches[1]["position"] + 64 + 10
    data[pos] ^= 0xFF
    bad = broker.parent / "bad.log"
    bad.write_bytes(bytes(data))
    r = cli(broker, "dump", str(bad), data_dir_flag=False)
    assert r.returncode == 1
    assert "crc_valid: false" in r.out
    assert len(r.err.strip().splitlines()) == 1 and "offset 100" in r.err and "bad.log" in r.err


# ---------------------------------------------------------------- topics
def test_topics_lifecycle(broker):
    r = cli(broker, "topics", "create", "orders", "--partitions", "3", "--config", "storage=memory",
            "--config", "retention_ms=60000")
    assert r.returncode == 0, r.err
    assert r.out.strip() == "Created topic orders."
    assert cli(broker, "topics", "create", "audit").returncode == 0
    r = cli(broker, "topics", "list")
    assert r.returncode == 0 and r.out.split() == ["audit", "orders"]
    listing = json.loads(cli(broker, "topics", "list", "--json").out)
    assert sorted(listing) == ["audit", "orders"]
    assert len(listing["orders"]["partitions"]) == 3
    assert listing["orders"]["config"]["storage"] == "memory"

    r = cli(broker, "topics", "alter", "orders", "--partitions", "4", "--config", "retention_ms=120000")
    assert r.returncode == 0, r.err
    d = json.loads(cli(broker, "topics", "describe", "orders", "--json").out)
    assert len(d["partitions"]) == 4 and d["config"]["retention_ms"] == 120000

    assert cli(broker, "topics", "delete", "audit").out.strip() == "Deleted topic audit."
    assert cli(broker, "topics", "list").out.split() == ["orders"]
    assert_error(cli(broker, "topics", "describe", "audit"), "audit")


def test_describe_shows_offsets_bytes_and_config(broker):
    assert cli(broker, "topics", "create", "ev", "--partitions", "2", "--config", "chunk_bytes=65536").returncode == 0
    lines = b"".join(b"v%d\n" % i for i in range(25))
    assert cli(broker, "produce", "ev", "--partition", "1", stdin=lines).returncode == 0
    r = cli(broker, "topics", "describe", "ev")
    assert r.returncode == 0, r.err
    lines = r.out.strip().splitlines()
    head, configs, header, p0, p1 = lines[:5]
    assert lines[-1].startswith("shared memory: budget ")
    assert "Topic: ev" in head and "PartitionCount: 2" in head
    assert "chunk_bytes=65536" in configs and "retention_ms=" in configs
    cols = header.split()
    assert cols[:4] == ["PARTITION", "START-OFFSET", "END-OFFSET", "DURABLE-OFFSET"]
    assert {"SHM-RESERVED", "SHM-RESIDENT", "SHM-USED", "FILL", "DISK-BYTES"} <= set(cols)
    assert p0.split()[:3] == ["0", "0", "0"]
    assert p1.split()[:3] == ["1", "0", "25"]
    d = json.loads(cli(broker, "topics", "describe", "ev", "--json").out)
    p = d["partitions"][1]
    assert (p["start_offset"], p["end_offset"]) == (0, 25)
    assert p["durable_offset"] <= 25 and p["bytes"] >= 0 and "disk_bytes" in p
    everything = json.loads(cli(broker, "topics", "describe", "--json").out)
    assert list(everything) == ["ev"]


# ---------------------------------------------------------------- produce/consume
def test_produce_consume_round_trip(broker):
    assert cli(broker, "topics", "create", "rt", "--partitions", "3").returncode == 0
    lines = [f"user-{i % 5}:payload {i} é".encode() for i in range(40)]
    r = cli(broker, "produce", "rt", "--key-separator", ":", stdin=b"\n".join(lines) + b"\n")
    assert r.returncode == 0, r.err
    r = cli(broker, "consume", "rt", "--from-beginning", "--max-messages", "40", "--print-key",
            "--print-offset", "--print-partition", "--timeout-ms", "10000")
    assert r.returncode == 0, r.err
    assert "Processed a total of 40 messages" in r.err
    got = r.stdout.splitlines()
    assert len(got) == 40
    seen = {}
    for line in got:
        part, off, key, value = line.split(b"\t")
        assert part.startswith(b"Partition:") and off.startswith(b"Offset:")
        seen.setdefault((key, int(part[10:])), []).append((int(off[7:]), value))
    # one key, one partition; within it, offsets dense and in send order
    assert sorted(k for k, _ in seen) == sorted({ln.split(b":")[0] for ln in lines})
    values_by_key = {k: [v for _, v in sorted(vs)] for (k, _), vs in seen.items()}
    for key, values in values_by_key.items():
        assert values == [ln.split(b":", 1)[1] for ln in lines if ln.split(b":")[0] == key]
    by_partition = {}
    for (_, p), vs in seen.items():
        by_partition.setdefault(p, []).extend(o for o, _ in vs)
    for offs in by_partition.values():
        assert sorted(offs) == list(range(len(offs)))


def test_consume_defaults_to_latest_and_reads_a_partition_from_an_offset(broker):
    assert cli(broker, "topics", "create", "lat").returncode == 0
    assert cli(broker, "produce", "lat", stdin=b"a\nb\nc\nd\n").returncode == 0
    r = cli(broker, "consume", "lat", "--timeout-ms", "300")
    assert r.returncode == 0, r.err
    assert r.out == "" and "Processed a total of 0 messages" in r.err
    r = cli(broker, "consume", "lat", "--partition", "0", "--offset", "2", "--max-messages", "2",
            "--print-offset", "--timeout-ms", "5000")
    assert r.returncode == 0, r.err
    assert r.out.splitlines() == ["Offset:2\tc", "Offset:3\td"]
    assert_error(cli(broker, "consume", "lat", "--partition", "7", "--timeout-ms", "100"), "lat")


def test_produce_rejects_a_line_without_the_separator(broker):
    assert cli(broker, "topics", "create", "ks").returncode == 0
    assert_error(cli(broker, "produce", "ks", "--key-separator", "=", stdin=b"k=v\nnokey\n"), "line 2")
    r = cli(broker, "consume", "ks", "--from-beginning", "--print-key", "--max-messages", "1",
            "--timeout-ms", "5000")
    assert r.out == "k\tv\n"


# ---------------------------------------------------------------- groups
def test_groups(broker):
    assert cli(broker, "topics", "create", "gt", "--partitions", "2").returncode == 0
    assert cli(broker, "produce", "gt", "--partition", "0", stdin=b"".join(b"a%d\n" % i for i in range(10))).returncode == 0
    assert cli(broker, "produce", "gt", "--partition", "1", stdin=b"".join(b"b%d\n" % i for i in range(4))).returncode == 0
    r = cli(broker, "consume", "gt", "--group", "g1", "--from-beginning", "--max-messages", "6",
            "--timeout-ms", "10000")
    assert r.returncode == 0, r.err
    assert len(r.out.splitlines()) == 6
    r = cli(broker, "groups", "list")
    assert r.returncode == 0, r.err
    assert r.out.split() == ["g1"]
    assert "g1" in json.loads(cli(broker, "groups", "list", "--json").out)
    r = cli(broker, "groups", "describe", "g1")
    assert r.returncode == 0, r.err
    lines = r.out.strip().splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("GROUP"))
    assert lines[header].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                                     "CONSUMER-ID"]
    rows = [ln.split() for ln in lines[header + 1:]]
    assert rows and all(row[:2] == ["g1", "gt"] for row in rows)
    # exactly what was printed is committed: 6 messages in all
    assert sum(int(row[3]) for row in rows) == 6
    ends = {"0": 10, "1": 4}
    for row in rows:
        assert int(row[4]) == ends[row[2]]
        assert int(row[5]) == int(row[4]) - int(row[3])
    d = json.loads(cli(broker, "groups", "describe", "g1", "--json").out)
    assert sum(p["committed"] for p in d["partitions"]) == 6
    r = cli(broker, "groups", "reset-offsets", "g1", "--topic", "gt", "--to-earliest", "--execute")
    assert r.returncode == 0, r.err
    assert [ln.split() for ln in r.out.strip().splitlines()[1:]] == [["g1", "gt", "0", "0"], ["g1", "gt", "1", "0"]]
    d = json.loads(cli(broker, "groups", "describe", "g1", "--json").out)
    assert sorted((p["partition"], p["lag"]) for p in d["partitions"]) == [(0, 10), (1, 4)]
    r = cli(broker, "groups", "reset-offsets", "g1", "--topic", "gt", "--to-offset", "3", "--json", "--execute")
    assert r.returncode == 0, r.err
    assert [o[2] for o in json.loads(r.out)["offsets"]] == [3, 3]
    r = cli(broker, "consume", "gt", "--group", "g1", "--max-messages", "8", "--timeout-ms", "10000")
    assert sorted(r.out.split()) == sorted([f"a{i}" for i in range(3, 10)] + ["b3"])
    assert_error(cli(broker, "groups", "describe", "nobody"), "nobody")


# ---------------------------------------------------------------- perf
PRODUCER_LINE = re.compile(r"^(\d+) records sent, [\d.]+ records/sec \([\d.]+ MB/sec\), [\d.]+ ms avg latency, "
                           r"[\d.]+ ms max latency, .* ms 99th, .*$")
CONSUMER_LINE = re.compile(r"^(\d+) records received, [\d.]+ records/sec \([\d.]+ MB/sec\)")


def test_perf_produce_then_consume(broker):
    assert cli(broker, "topics", "create", "pf", "--partitions", "2").returncode == 0
    r = cli(broker, "perf", "produce", "--topic", "pf", "--num-records", "5000", "--record-size", "64")
    assert r.returncode == 0, r.err
    m = PRODUCER_LINE.match(r.out.strip())
    assert m and m[1] == "5000", r.out
    r = cli(broker, "perf", "produce", "--topic", "pf", "--num-records", "5000", "--record-size", "64",
            "--batch", "500", "--json")
    assert r.returncode == 0, r.err
    assert json.loads(r.out)["records"] == 5000
    r = cli(broker, "perf", "consume", "--topic", "pf", "--num-records", "10000")
    assert r.returncode == 0, r.err
    m = CONSUMER_LINE.match(r.out.strip())
    assert m and m[1] == "10000", r.out
    assert_error(cli(broker, "perf", "consume", "--topic", "pf", "--num-records", "20000", "--timeout-ms", "300"),
                 "pf", "10000 of 20000")


def test_perf_both_runs_two_processes(broker):
    assert cli(broker, "topics", "create", "pb").returncode == 0
    r = cli(broker, "perf", "both", "--topic", "pb", "--num-records", "20000", "--record-size", "32", "--batch")
    assert r.returncode == 0, r.err
    prod, cons = r.out.strip().splitlines()
    assert PRODUCER_LINE.match(prod.removeprefix("producer: ")), prod
    m = CONSUMER_LINE.match(cons.removeprefix("consumer: "))
    assert m and m[1] == "20000", cons
    assert "end-to-end latency" in cons


# ---------------------------------------------------------------- stats/top
def test_stats_table_and_json(broker):
    assert cli(broker, "topics", "create", "st", "--partitions", "2").returncode == 0
    assert cli(broker, "produce", "st", "--partition", "0", stdin=b"1\n2\n").returncode == 0
    r = cli(broker, "stats")
    assert r.returncode == 0, r.err
    assert "messages 2" in r.out and "TOPIC" in r.out
    s = json.loads(cli(broker, "stats", "--json").out)
    p0 = s["topics"]["st"]["partitions"][0]
    assert p0["end_offset"] == 2 and "chunks_in_use" in p0 and "disk_bytes" in p0
    # nothing gates it (no group, no reader left): only the active chunk is held
    assert p0["chunks_held"] == 1 <= p0["chunks_in_use"]


def test_top_runs_two_iterations(broker):
    assert cli(broker, "topics", "create", "tp", "--partitions", "2").returncode == 0
    assert cli(broker, "produce", "tp", "--partition", "1", stdin=b"x\ny\nz\n").returncode == 0
    r = cli(broker, "top", "--iterations", "2", "--interval", "0.2")
    assert r.returncode == 0, r.err
    assert "\x1b[" not in r.out, "no ANSI codes when stdout is not a terminal"
    frames = [f for f in r.out.split("shmlog top") if f.strip()]
    assert len(frames) == 2
    for f in frames:
        assert "IN/s" in f and "OUT/s" in f and "FILL" in f
        rows = [ln.split() for ln in f.splitlines() if ln.startswith("tp ")]
        assert [(row[1], row[2]) for row in rows] == [("0", "0"), ("1", "3")]
        assert "supervisor" in f  # the process table names the supervisor's role
    r = cli(broker, "top", "--iterations", "2", "--interval", "0.1", "--json")
    assert r.returncode == 0, r.err
    snaps = [json.loads(ln) for ln in r.out.splitlines()]
    assert len(snaps) == 2
    assert snaps[0]["partitions"][1]["produce_rate"] is None
    assert snaps[1]["partitions"][1]["produce_rate"] == 0
    assert any(p["role"] == "supervisor" for p in snaps[1]["processes"])


def test_top_shows_live_rates_and_processes(broker):
    """A producer and a reader attached while top runs: their pids and roles show."""
    with shmlog.connect(broker) as c:
        c.create_topic("live", partitions=1, storage="memory")
        producer = c.producer()
        consumer = c.consumer("live")
        producer.send("live", b"hello")
        producer.flush()
        assert consumer.poll(timeout=5) is not None
        r = cli(broker, "top", "--iterations", "2", "--interval", "0.2", "--json")
        producer.close()
        consumer.close()
    assert r.returncode == 0, r.err
    snap = json.loads(r.out.splitlines()[-1])
    roles = {p["pid"]: p["role"] for p in snap["processes"]}
    assert roles.get(os.getpid()) == "producer+reader"
    me = next(p for p in snap["processes"] if p["pid"] == os.getpid())
    assert me["rss_bytes"] > 0 and me["cpu_percent"] is not None
