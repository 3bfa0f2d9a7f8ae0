"""`shmlog mirror`: what needs no Kafka cluster. A bad option fails in the
command, naming it, before anything starts; `mirror list` and `mirror stop`
never start a supervisor (which would start every managed mirror too). The
mirrors themselves are tested against real brokers in tests/bridge."""

from __future__ import annotations

import json

import pytest
from _broker_helpers import running_cluster, supervisor_pid
from test_cli import cli

from shmlog import protocol

pytest.importorskip("confluent_kafka", reason="`shmlog mirror out|in` needs confluent-kafka (shmlog[kafka])")


@pytest.mark.parametrize("args, match", [
    (["out", "--topic", "events", "--to", "127.0.0.1:1", "--max-in-flight", "0"],
     "max_in_flight (--max-in-flight)=0 is out of range: it must be a count of messages >= 1"),
    (["out", "--topic", "events", "--to", "127.0.0.1:1", "--replication-factor", "0"],
     "replication_factor (--replication-factor)=0 is out of range"),
    (["out", "--topic", "events", "--to", "127.0.0.1:1", "-X", "enable.idempotence=false"],
     "enable.idempotence='false' is not allowed: mirror out needs enable.idempotence=true"),
    (["out", "--topic", "events", "--to", "127.0.0.1:1", "-X", "delivery.timeout.ms=1000"],
     "delivery.timeout.ms='1000' is not allowed: mirror out needs delivery.timeout.ms=0"),
    (["in", "--topic", "t", "--from", "127.0.0.1:1", "--topic-config", "storage=tape"],
     "topic_config (--topic-config): invalid storage='tape'"),
])
def test_bad_option_fails_in_the_command(data_dir, args, match):
    r = cli(data_dir, "mirror", *args)
    assert r.returncode == 1, (r.out, r.err)
    assert match in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err  # one line, no traceback
    assert supervisor_pid(data_dir) is None  # refused before anything started


def test_list_and_stop_never_start_a_supervisor(data_dir):
    r = cli(data_dir, "mirror", "list")
    assert r.returncode == 0, r.err
    assert "no supervisor is serving" in r.err and "no mirror runs" in r.err, r.err
    assert supervisor_pid(data_dir) is None
    # a registered mirror whose supervisor is not running: listed as down, from its spec file
    with running_cluster(data_dir):
        pass
    spec = protocol.mirror_spec("out", "events", "127.0.0.1:1", name="ev")
    protocol.mirrors_dir(data_dir).mkdir(mode=0o700, exist_ok=True)
    protocol.mirror_file(data_dir, "ev").write_text(json.dumps(spec))
    r = cli(data_dir, "mirror", "list", "--json")
    assert r.returncode == 0, r.err
    assert [(row["name"], row["managed"], row["state"]) for row in json.loads(r.out)] == [("ev", True, "down")]
    assert "the 1 managed mirror(s) below start with it" in r.err, r.err
    r = cli(data_dir, "mirror", "list")
    assert r.returncode == 0 and "ev" in r.out and "down" in r.out, (r.out, r.err)
    assert supervisor_pid(data_dir) is None
    # stop: a clear error, and the registration stays for the next supervisor
    r = cli(data_dir, "mirror", "stop", "ev")
    assert r.returncode == 1, (r.out, r.err)
    assert "no supervisor is serving" in r.err and "mirror ev is not running" in r.err, r.err
    assert "`shmlog serve`" in r.err, r.err
    assert protocol.mirror_file(data_dir, "ev").exists()
    r = cli(data_dir, "mirror", "stop", "nope")
    assert r.returncode == 1 and "no mirror named 'nope' is registered" in r.err, r.err
    assert supervisor_pid(data_dir) is None
