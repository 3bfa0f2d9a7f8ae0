"""Command-line habits (issue 17): global options before or after the
command, no abbreviated options, produce --key/--header/--property, consume
--format/--property, Kafka's dotted topic settings, reset-offsets previews
unless --execute, and dump on files that are not segments.

Parsing is checked in-process (no supervisor); everything else runs the CLI
in a subprocess against a real supervisor, as tests/cli/test_cli.py does."""

from __future__ import annotations

import argparse
import json

import pytest
import test_cli
from test_cli import assert_error, cli

import shmlog
from shmlog.cli import _apply_globals, build_parser, main, walk
from shmlog.cli.lines import MessageFormat
from shmlog.client.consumer import Message
from shmlog.config import kafka_topic_setting
from shmlog.core.partitioner import partition_for

broker = test_cli.broker  # the fixture: the test's data dir, its supervisor stopped afterwards


# ---------------------------------------------------------------- parsing
def _parse(*argv: str) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    _apply_globals(parser, args)
    return args


def test_no_parser_takes_abbreviations():
    parsers = list(walk(build_parser()))
    assert len(parsers) > 15  # every command and sub-command
    assert all(p.allow_abbrev is False for p in parsers)


@pytest.mark.parametrize("argv", [
    ["produce", "t", "--key-sep", ":"],            # once silently --key-separator
    ["topics", "create", "t", "--part", "2"],
    ["consume", "t", "--from-beg"],
    ["--data", "/tmp/x", "topics", "list"],
    ["--json", "produce", "t"],                     # produce prints no JSON
    ["--no-start", "serve"],
    ["groups", "reset-offsets", "g", "--topic", "t", "--to-latest", "--execute", "--dry-run"],
    ["produce", "t", "--header", "novalue"],
    ["produce", "t", "--property", "parse.key=maybe"],
    ["consume", "t", "--property", "print.colour=true"],
    ["consume", "t", "--format", "%s %q"],
])
def test_usage_errors_exit_2_before_connecting(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--data-dir", str(tmp_path / "d")] if argv[0] != "--data" else argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_global_options_before_or_after_the_command():
    assert _parse("--data-dir", "D", "topics", "list").data_dir == "D"
    assert _parse("topics", "list", "--data-dir", "D").data_dir == "D"
    assert _parse("topics", "--data-dir", "D", "list").data_dir == "D"
    assert _parse("--data-dir", "A", "topics", "list", "--data-dir", "B").data_dir == "B"
    a = _parse("--json", "--no-start", "groups", "list")
    assert a.json is True and a.no_start is True
    a = _parse("groups", "describe", "g", "--json")
    assert a.json is True and a.no_start is False
    a = _parse("stats")
    assert a.json is False and a.data_dir  # the default data dir
    assert _parse("--data-dir", "D", "serve").data_dir == "D"


def test_message_format_fields_and_escapes():
    msg = Message("t", 3, 42, b"k", b"value", [("a", b"1"), ("b", None)], 1700000000123)
    f = MessageFormat(r"%t|%p|%o|%k|%s|%K|%S|%T|%h|100%%\t\\\n")
    assert f(msg) == b"t|3|42|k|value|1|5|1700000000123|a=1,b=null|100%\t\\\n"
    null = Message("t", 0, 0, None, None, (), 0)
    assert MessageFormat("%k|%K|%s|%S|%h").__call__(null) == b"|-1||-1|"
    assert MessageFormat("plain").__call__(null) == b"plain"  # no newline is added


def test_kafka_topic_setting_names():
    assert kafka_topic_setting("retention.ms", 1000) == ("retention_ms", 1000)
    assert kafka_topic_setting("retention.ms", -1) == ("retention_ms", None)
    assert kafka_topic_setting("retention.bytes", -1) == ("retention_bytes", None)
    assert kafka_topic_setting("flush.ms", 50) == ("fsync_interval_ms", 50)
    assert kafka_topic_setting("chunk.bytes", 65536) == ("chunk_bytes", 65536)
    assert kafka_topic_setting("segment.bytes", -1) == ("segment_bytes", -1)  # no "forever" there
    assert kafka_topic_setting("retention_ms", -1) == ("retention_ms", -1)    # shmlog's own name
    assert kafka_topic_setting("cleanup.policy", "compact") == ("cleanup.policy", "compact")


# ---------------------------------------------------------------- end to end
def test_global_data_dir_and_json_before_the_command(broker):
    r = cli(broker, "--data-dir", str(broker), "topics", "create", "early", data_dir_flag=False)
    assert r.returncode == 0, r.err
    r = cli(broker, "--data-dir", str(broker), "--json", "topics", "list", data_dir_flag=False)
    assert r.returncode == 0, r.err
    assert list(json.loads(r.out)) == ["early"]
    r = cli(broker, "topics", "list", "--json")
    assert list(json.loads(r.out)) == ["early"]
    r = cli(broker, "--json", "produce", "early", stdin=b"x\n")
    assert r.returncode == 2 and "produce does not take --json" in r.err


def test_produce_key_headers_and_kafka_properties(broker):
    assert cli(broker, "topics", "create", "kh", "--partitions", "4").returncode == 0
    r = cli(broker, "produce", "kh", "--key", "user-7", "--header", "trace=abc", "--header", "empty=",
            stdin=b"one\ntwo\n")
    assert r.returncode == 0, r.err
    r = cli(broker, "produce", "kh", "--property", "parse.key=true", "--property", "key.separator=:",
            stdin=b"user-7:three\n")
    assert r.returncode == 0, r.err
    r = cli(broker, "produce", "kh", "--property", "parse.key=true", stdin=b"user-7\tfour\n")  # tab default
    assert r.returncode == 0, r.err
    with shmlog.connect(broker) as c, c.consumer("kh", auto_offset_reset="earliest") as consumer:
        msgs = []
        while len(msgs) < 4:
            got = consumer.consume(100, timeout=10)
            assert got, "messages missing"
            msgs += got
    msgs.sort(key=lambda m: m.offset)
    assert [m.value for m in msgs] == [b"one", b"two", b"three", b"four"]
    assert {m.key for m in msgs} == {b"user-7"}
    assert {m.partition for m in msgs} == {partition_for(b"user-7", 4)}
    assert [list(m.headers or ()) for m in msgs] == [[("trace", b"abc"), ("empty", b"")]] * 2 + [[]] * 2

    assert_error(cli(broker, "produce", "kh", "--key", "k", "--key-separator", ":", stdin=b"a:b\n"),
                 "--key", "--key-separator")
    assert_error(cli(broker, "produce", "kh", "--property", "key.separator=:", stdin=b"a:b\n"),
                 "parse.key")


def test_consume_format_and_kafka_properties(broker):
    assert cli(broker, "topics", "create", "fmt").returncode == 0
    r = cli(broker, "produce", "fmt", "--key", "k", "--header", "h=1", stdin=b"v0\nv1\n")
    assert r.returncode == 0, r.err
    base = ["consume", "fmt", "--from-beginning", "--max-messages", "2", "--timeout-ms", "10000"]
    r = cli(broker, *base, "--format", r"%t %p %o %k=%s [%h] %S\n")
    assert r.returncode == 0, r.err
    assert r.out == "fmt 0 0 k=v0 [h=1] 2\nfmt 0 1 k=v1 [h=1] 2\n"
    r = cli(broker, *base, "--property", "print.key=true", "--property", "print.offset=true",
            "--property", "print.headers=true", "--property", "key.separator=|")
    assert r.returncode == 0, r.err
    assert r.out.splitlines() == ["Offset:0|h:1|k|v0", "Offset:1|h:1|k|v1"]  # Kafka's columns
    r = cli(broker, *base, "--format", r"%s\n", "--print-key")
    assert_error(r, "--format")


def test_dotted_topic_settings(broker):
    r = cli(broker, "topics", "create", "dot", "--config", "retention.ms=1000", "--config", "segment.bytes=1048576",
            "--config", "retention.bytes=-1")
    assert r.returncode == 0, r.err
    with shmlog.connect(broker) as c:
        cfg = c.describe_topic("dot").config
        assert (cfg["retention_ms"], cfg["segment_bytes"], cfg["retention_bytes"]) == (1000, 1 << 20, None)
        assert cli(broker, "topics", "alter", "dot", "--config", "retention.ms=-1").returncode == 0
        assert c.describe_topic("dot").config["retention_ms"] is None
    assert_error(cli(broker, "topics", "alter", "dot", "--config", "cleanup.policy=compact"), "cleanup.policy")
    assert_error(cli(broker, "topics", "alter", "dot", "--config", "segment.bytes=-1"), "segment_bytes")


def _committed(data_dir, group):
    d = json.loads(cli(data_dir, "groups", "describe", group, "--json").out)
    return sorted((p["partition"], p["committed"]) for p in d["partitions"])


def test_reset_offsets_previews_unless_execute(broker):
    assert cli(broker, "topics", "create", "ro", "--partitions", "2").returncode == 0
    with shmlog.connect(broker) as c:
        with c.producer() as p:
            p.send_batch("ro", [b"a"] * 10, partition=0)
            p.send_batch("ro", [b"b"] * 4, partition=1)
        with c.consumer("ro", group="g", auto_offset_reset="earliest") as consumer:
            n = 0
            while n < 14:
                n += len(consumer.consume(100, timeout=10))
            consumer.commit()
        # the API's preview: the offsets a reset would commit, nothing committed
        assert c.reset_offsets("g", "ro", to="earliest", dry_run=True) == {0: 0, 1: 0}
        assert c.reset_offsets("nobody", "ro", to="latest", dry_run=True) == {0: 10, 1: 4}
        assert "nobody" not in json.dumps(c.groups()), "a preview created a group"
    assert _committed(broker, "g") == [(0, 10), (1, 4)]
    for extra in ([], ["--dry-run"]):
        r = cli(broker, "groups", "reset-offsets", "g", "--topic", "ro", "--to-earliest", *extra)
        assert r.returncode == 0, r.err
        assert [ln.split() for ln in r.out.strip().splitlines()[1:]] == [["g", "ro", "0", "0"], ["g", "ro", "1", "0"]]
        assert "dry run" in r.err and "--execute" in r.err
        assert _committed(broker, "g") == [(0, 10), (1, 4)]
    r = cli(broker, "groups", "reset-offsets", "g", "--topic", "ro", "--to-offset", "2", "--json")
    assert json.loads(r.out)["dry_run"] is True
    r = cli(broker, "groups", "reset-offsets", "g", "--topic", "ro", "--to-offset", "2", "--execute", "--json")
    assert r.returncode == 0, r.err
    assert json.loads(r.out)["dry_run"] is False and r.err == ""
    assert _committed(broker, "g") == [(0, 2), (1, 2)]


def test_dump_refuses_files_that_are_not_segments_and_prints_records(broker):
    with shmlog.connect(broker) as c:
        c.create_topic("seg", storage="disk")
        with c.producer() as p:
            p.send("seg", b"plain", key=b"k1", headers=[("trace", b"t1")])
            p.flush()
        with c.producer(compression="lz4") as p:
            p.send_batch("seg", [b"z%d" % i for i in range(3)], partition=0)
            p.flush(durable=True)
    pdir = broker / "topics" / "seg" / "0"
    log = next(pdir.glob("*.log"))
    for name, words in ((log.with_suffix(".index"), ["offset index", "not a segment"]),
                        (log.with_suffix(".timeindex"), ["time index", "not a segment"])):
        assert_error(cli(broker, "dump", str(name), data_dir_flag=False), str(name), *words)
    junk = broker.parent / "junk.log"
    junk.write_bytes(b"hello, world\n" * 10)
    assert_error(cli(broker, "dump", str(junk), data_dir_flag=False), "junk.log", "not a segment")
    empty = broker.parent / "00000000000000000000.log"
    empty.write_bytes(b"")
    r = cli(broker, "dump", str(empty), data_dir_flag=False)
    assert r.returncode == 0 and r.out.strip().splitlines()[-1] == "0 batches"

    r = cli(broker, "dump", str(log), "--print-data-log", data_dir_flag=False)
    assert r.returncode == 0, r.err
    recs = [ln for ln in r.out.splitlines() if ln.startswith("| ")]
    assert recs[0].startswith("| offset: 0 timestamp: ") and recs[0].endswith(
        "key: k1 value: plain headers: trace=t1")
    assert [ln.split("value: ")[1] for ln in recs[1:]] == ["z0", "z1", "z2"]
    assert "compression: lz4" in r.out
    batches = json.loads(cli(broker, "dump", str(log), "--print-data-log", "--json", data_dir_flag=False).out)
    assert [(rec["offset"], rec["key"], rec["value"], rec["headers"]) for b in batches for rec in b["records"]] == [
        (0, "k1", "plain", [["trace", "t1"]]), (1, "null", "z0", []), (2, "null", "z1", []), (3, "null", "z2", [])]
    plain = cli(broker, "dump", str(log), data_dir_flag=False)
    assert "| offset" not in plain.out and "records" not in json.loads(
        cli(broker, "dump", str(log), "--json", data_dir_flag=False).out)[0]
