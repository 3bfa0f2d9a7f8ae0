"""shmlog.broker.metrics: the stats dict as Prometheus text (format 0.0.4) and JSON.

The formatting is pure, so most tests feed it a literal dict; one runs
`shmlog stats --prometheus` against a real supervisor and parses its output
with the same strict line check."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

import shmlog
from shmlog.broker import metrics

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)"
SAMPLE_RE = re.compile(
    rf"^(?P<name>{NAME})(?:\{{(?P<labels>{LABEL_NAME}={LABEL_VALUE}(?:,{LABEL_NAME}={LABEL_VALUE})*)\}})?"
    rf" (?P<value>{VALUE})(?: -?\d+)?$"
)
HELP_RE = re.compile(rf"^# HELP (?P<name>{NAME}) (?P<text>.*)$")
TYPE_RE = re.compile(rf"^# TYPE (?P<name>{NAME}) (?P<kind>counter|gauge|histogram|summary|untyped)$")
LABEL_RE = re.compile(rf"({LABEL_NAME})=({LABEL_VALUE})")


def parse_exposition(text: str):
    """Strictly parse Prometheus text format 0.0.4; returns
    {name: {"type": kind, "help": text, "samples": [(labels, value)]}}.
    Fails on any line that is not a comment, a HELP/TYPE line or a sample,
    on a sample before its TYPE, on a family split in two, or on a repeated
    label set."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families = {}
    current = None
    closed = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        assert line == line.strip() or line.startswith("#"), f"line {lineno}: stray whitespace: {line!r}"
        if not line:
            continue
        if line.startswith("#"):
            mh, mt = HELP_RE.match(line), TYPE_RE.match(line)
            if mh:
                name = mh["name"]
                assert name not in closed, f"line {lineno}: family {name} appears twice"
                fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
                assert fam["help"] is None, f"line {lineno}: second HELP for {name}"
                fam["help"] = mh["text"]
            elif mt:
                name = mt["name"]
                assert name not in closed, f"line {lineno}: family {name} appears twice"
                fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
                assert fam["type"] is None, f"line {lineno}: second TYPE for {name}"
                assert not fam["samples"], f"line {lineno}: TYPE after samples of {name}"
                fam["type"] = mt["kind"]
            else:
                assert not line.startswith(("# HELP", "# TYPE")), f"line {lineno}: malformed {line!r}"
                continue
            if current is not None and current != name:
                closed.add(current)
            current = name
            continue
        ms = SAMPLE_RE.match(line)
        assert ms, f"line {lineno}: not a valid sample line: {line!r}"
        name = ms["name"]
        assert name in families and families[name]["type"], f"line {lineno}: {name} has no TYPE before it"
        assert name == current, f"line {lineno}: sample of {name} outside its family block"
        labels = tuple(LABEL_RE.findall(ms["labels"] or ""))
        keys = [k for k, _ in labels]
        assert len(keys) == len(set(keys)), f"line {lineno}: repeated label name"
        assert all(lb not in [s[0] for s in families[name]["samples"]] for lb in [labels]), \
            f"line {lineno}: duplicate sample {line!r}"
        value = ms["value"]
        families[name]["samples"].append((labels, float(value.replace("Inf", "inf"))))
    return families


def _labels(d):
    return tuple((k, json.dumps(str(v))) for k, v in d)


STATS = {
    "supervisor_pid": 4242,
    "clients": 3,
    "reaped_processes": 2,
    "topics": {
        'we"ird\\name': {"config": {}, "partitions": [
            {"partition": 0, "start_offset": 0, "end_offset": 7, "durable_offset": 7, "bytes": 65536,
             "chunks_in_use": 1, "chunks_held": 1, "chunk_count": 4, "aborted_batches": 0, "rotations": 0,
             "disk_bytes": 0, "producers": [], "readers": []}]},
        "events": {"config": {}, "partitions": [
            {"partition": 0, "start_offset": 10, "end_offset": 1000, "durable_offset": 900, "bytes": 1 << 20,
             "chunks_in_use": 4, "chunks_held": 3, "chunk_count": 4, "aborted_batches": 5, "rotations": 12,
             "disk_bytes": 4096, "shm_reserved_bytes": (4 << 20) + 36864, "shm_resident_bytes": 4 << 20,
             "shm_used_bytes": 1 << 20,
             "producers": [{"pid": 1, "batches": 40, "records": 1000}],
             "readers": [{"pid": 2, "position": 990}], "fsync_latency_ms": 1.5},
            {"partition": 1, "start_offset": 0, "end_offset": 3, "durable_offset": 3, "bytes": 0,
             "chunks_in_use": 0, "chunks_held": 0, "chunk_count": 4, "aborted_batches": 0, "rotations": 0,
             "disk_bytes": 0, "producers": [], "readers": []},
        ]},
    },
    "shm": {"budget_bytes": 1 << 30, "reserved_bytes": (8 << 20) + 73728, "resident_bytes": 8 << 20,
            "tmpfs_bytes": 8 << 30, "tmpfs_free_bytes": 7 << 30},
    "groups": {"billing": [
        {"topic": "events", "partition": 0, "committed": 990, "end_offset": 1000, "lag": 10, "consumer": "m-1"},
        {"topic": "events", "partition": 1, "committed": None, "end_offset": 3, "lag": 3, "consumer": None},
    ]},
}


def test_prometheus_is_strict_exposition_format():
    fams = parse_exposition(metrics.prometheus(STATS))
    for name, fam in fams.items():
        assert name.startswith("shmlog_")
        assert fam["help"], name
        assert fam["type"] in ("counter", "gauge")
        if fam["type"] == "counter":
            assert name.endswith("_total"), name


def test_prometheus_values_and_labels():
    fams = parse_exposition(metrics.prometheus(STATS))

    def value(name, **labels):
        want = _labels(labels.items())
        for lb, v in fams[name]["samples"]:
            if sorted(lb) == sorted(want):
                return v
        raise AssertionError(f"{name}{labels} not in {fams[name]['samples']}")

    assert fams["shmlog_messages_in_total"]["type"] == "counter"
    assert value("shmlog_messages_in_total", topic="events", partition=0) == 1000
    assert value("shmlog_messages_in_total", topic="events", partition=1) == 3
    # fill is what producers would wait on (held), not what holds data (in use)
    assert value("shmlog_chunk_fill_ratio", topic="events", partition=0) == 0.75
    assert value("shmlog_chunks_in_use", topic="events", partition=0) == 4
    assert value("shmlog_chunks_held", topic="events", partition=0) == 3
    assert value("shmlog_aborted_batches_total", topic="events", partition=0) == 5
    assert value("shmlog_rotations_total", topic="events", partition=0) == 12
    assert value("shmlog_shm_reserved_bytes", topic="events", partition=0) == (4 << 20) + 36864
    assert value("shmlog_shm_resident_bytes", topic="events", partition=0) == 4 << 20
    assert value("shmlog_shm_used_bytes", topic="events", partition=0) == 1 << 20
    assert fams["shmlog_shm_budget_bytes"]["samples"] == [((), float(1 << 30))]
    assert fams["shmlog_shm_reserved_total_bytes"]["samples"] == [((), float((8 << 20) + 73728))]
    assert value("shmlog_disk_bytes", topic="events", partition=0) == 4096
    assert value("shmlog_group_lag", group="billing", topic="events", partition=0) == 10
    assert value("shmlog_group_lag", group="billing", topic="events", partition=1) == 3
    assert value("shmlog_fsync_latency_seconds", topic="events", partition=0) == pytest.approx(0.0015)
    assert fams["shmlog_reaped_processes_total"]["samples"] == [((), 2.0)]
    # a label value with a quote and a backslash is escaped, and parses back
    assert value("shmlog_messages_in_total", topic='we"ird\\name', partition=0) == 7
    # a committed offset that is unknown is left out, not invented
    assert len(fams["shmlog_group_committed_offset"]["samples"]) == 1


def test_prometheus_leaves_out_what_it_does_not_know():
    text = metrics.prometheus({"supervisor_pid": 1, "topics": {}})
    fams = parse_exposition(text)
    assert "shmlog_reaped_processes_total" not in fams
    assert "shmlog_group_lag" not in fams
    assert fams["shmlog_topics"]["samples"] == [((), 0.0)]


@pytest.mark.parametrize("value, text", [(3, "3"), (0.25, "0.25"), (2.0, "2"), (True, "1"),
                                         (float("nan"), "NaN"), (float("inf"), "+Inf"), (-math.inf, "-Inf")])
def test_format_value(value, text):
    assert metrics.format_value(value) == text


def test_escape_label():
    assert metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_parser_rejects_bad_lines():
    for bad in ("shmlog_x 1\n",  # no TYPE
                "# TYPE shmlog_x gauge\nshmlog_x{a=b} 1\n",  # unquoted label
                "# TYPE shmlog_x gauge\nshmlog_x 1 2 3\n",
                "# TYPE shmlog_x gauge\nshmlog_x one\n",
                "# TYPE shmlog_x gauge\nshmlog_x 1\n# TYPE shmlog_y gauge\nshmlog_y 1\nshmlog_x 2\n"):
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def test_group_rows_accepts_common_shapes():
    ends = {("t", 0): 50, ("t", 1): 20}
    shapes = [
        {"partitions": [{"topic": "t", "partition": 0, "committed": 40, "member_id": "a"},
                        {"topic": "t", "partition": 1, "committed": 20, "end_offset": 20, "lag": 0}]},
        {"offsets": {"t": {"0": {"offset": 40}, "1": 20}},
         "members": [{"member_id": "a", "assignment": [["t", 0]]}]},
        {"offsets": {"t": {"0": 40, "1": 20}}, "members": {"a": {"assignment": [{"topic": "t", "partition": 0}]}}},
    ]
    for desc in shapes:
        rows = metrics.group_rows(desc, ends)
        assert [(r["topic"], r["partition"], r["committed"], r["end_offset"], r["lag"]) for r in rows] == \
            [("t", 0, 40, 50, 10), ("t", 1, 20, 20, 0)], desc
        assert rows[0]["consumer"] == "a"
    # a member that owns a partition without a committed offset: lag counts from 0
    rows = metrics.group_rows({"members": [{"member_id": "b", "pid": 7, "assignment": [["t", 1]]}]}, ends)
    assert rows == [{"topic": "t", "partition": 1, "committed": None, "end_offset": 20, "lag": 20,
                     "consumer": "b (pid 7)"}]
    assert metrics.group_rows(None) == []


def test_totals_and_json():
    tot = metrics.totals(STATS)
    assert tot["messages"] == 1010 and tot["group_lag"] == 13 and tot["aborted_batches"] == 5
    assert json.loads(metrics.as_json(STATS))["clients"] == 3


# ---------------------------------------------------------------- real broker
@pytest.fixture
def broker(data_dir):
    """The test's data dir; whatever supervisor the CLI started is stopped."""
    yield data_dir
    try:
        c = shmlog.connect(data_dir, start=False)
    except shmlog.BrokerNotRunning:
        return
    c.shutdown()


def _cli(data_dir, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "shmlog", *args, "--data-dir", str(data_dir)],
                          input=stdin, capture_output=True, timeout=120)


def test_stats_prometheus_from_a_live_broker(broker):
    assert _cli(broker, "topics", "create", "m", "--partitions", "2").returncode == 0
    r = _cli(broker, "produce", "m", "--partition", "1", stdin=b"a\nb\nc\n")
    assert r.returncode == 0, r.stderr
    r = _cli(broker, "stats", "--prometheus")
    assert r.returncode == 0, r.stderr
    fams = parse_exposition(r.stdout.decode())
    got = {dict(lb)["partition"]: v for lb, v in fams["shmlog_messages_in_total"]["samples"]}
    assert got == {'"0"': 0, '"1"': 3}
    for name in ("shmlog_chunk_fill_ratio", "shmlog_aborted_batches_total", "shmlog_rotations_total",
                 "shmlog_shm_reserved_bytes", "shmlog_shm_resident_bytes", "shmlog_shm_used_bytes",
                 "shmlog_disk_bytes"):
        assert len(fams[name]["samples"]) == 2, name
    r = _cli(broker, "stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert [p["end_offset"] for p in stats["topics"]["m"]["partitions"]] == [0, 3]


# ---------------------------------------------------------------- top's arithmetic
def test_top_rates_roles_and_render():
    from shmlog.cli import top

    def stats(end, pos, gate):
        return {"supervisor_pid": 9, "clients": 2, "topics": {"t": {"partitions": [
            {"partition": 0, "end_offset": end, "chunks_in_use": 3, "chunks_held": 2, "chunk_count": 4,
             "disk_bytes": 2048,
             "producers": [{"pid": 5}], "readers": [{"pid": 6, "position": pos}, {"pid": 9, "position": gate}]}]}},
            "groups": {"g": [{"topic": "t", "partition": 0, "committed": gate, "end_offset": end,
                              "lag": end - gate, "consumer": "m"}]}}

    before, after = stats(100, 90, 50), stats(300, 280, 250)
    # the supervisor's reader (a group's gate) is not consumption
    assert top.rates(after, before, 2.0) == {("t", 0): (100.0, 95.0)}
    assert top.rates(after, None, 2.0) == {("t", 0): (None, None)}
    roles = top.roles(after)
    assert {pid: sorted(r["roles"]) for pid, r in roles.items()} == {9: ["supervisor"], 5: ["producer"],
                                                                       6: ["reader"]}
    snap = top.snapshot(after, before, 2.0, {5: {"cpu": 12.5, "rss": 1 << 20, "name": "prod"}})
    p = snap["partitions"][0]
    assert (p["produce_rate"], p["consume_rate"], p["fill"], p["readers"]) == (100.0, 95.0, 0.5, 1)
    assert snap["groups"] == [{"group": "g", "topic": "t", "partition": 0, "committed": 250, "end_offset": 300,
                               "lag": 50, "consumer": "m"}]
    text = top.render(snap, "/data")
    assert "HELD/USED/CHUNKS" in text and "2/3/4" in text and "50%" in text and "2.0 KiB" in text and "12.5" in text and "1.0 MiB" in text
    assert "\x1b" not in text
