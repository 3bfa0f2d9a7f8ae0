"""Cluster.mirror, Cluster.mirrors and Cluster.stop_mirror: managed mirrors
that the supervisor runs as child processes, against real brokers (tansu,
and shmlog's own Kafka listener), and the caller-side checks of a spec."""

from __future__ import annotations

import inspect
import time

import pytest

pytest.importorskip("confluent_kafka", reason="the bridge tests need confluent-kafka (shmlog[kafka])")

from _broker_helpers import ROOMY, collect, pid_gone, running_cluster, wait_for  # noqa: E402
from _tansu import create_remote_topic, read_all  # noqa: E402
from test_mirror import FAST_GROUP, TS0, _check_remote, _index, _key, _produce, _wait_joined  # noqa: E402

from shmlog import errors, protocol  # noqa: E402
from shmlog.bridge.mirror_in import MirrorIn  # noqa: E402
from shmlog.bridge.mirror_out import MirrorOut  # noqa: E402


def _row(c, name):
    return next((r for r in c.mirrors() if r["name"] == name), None)


def test_cluster_mirror_out_list_stop(data_dir, remote):
    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=4, **ROOMY)
        row = c.mirror("events", to=remote.bootstrap, as_="events-remote", name="ev", settings={"acks": "all"},
                       max_in_flight=5000)
        assert row["name"] == "ev" and row["managed"] and row["direction"] == "out", row
        assert row["state"] in ("running", "retrying"), row
        pid = row["pid"]
        assert not pid_gone(pid)
        # the same spec again: nothing changes; a different one under the same name is refused
        assert c.mirror("events", to=remote.bootstrap, as_="events-remote", name="ev", settings={"acks": "all"},
                        max_in_flight=5000)["pid"] == pid
        with pytest.raises(errors.InvalidConfig, match="a different mirror named 'ev'"):
            c.mirror("events", to=remote.bootstrap, name="ev")
        _wait_joined(c, "mirror.ev")
        _produce(c, "events", 0, 3000)
        msgs = read_all(remote.bootstrap, "events-remote", 4, 3000)
        _check_remote(msgs, 0, 3000, 4)
        assert len(msgs) == 3000
        # rate and lag as mirrors(), `shmlog mirror list`, top and stats show them
        st = wait_for(lambda: (lambda r: r if r and r.get("lag_messages") == 0 and r.get("messages") == 3000
                               else None)(_row(c, "ev")), 20, 0.1, "the mirror to report lag 0")
        assert st["state"] == "running" and st["error"] is None and st["lag_seconds"] == 0, st
        assert "rate" in st and st["exits"] == 0
        assert [r["name"] for r in c.stats()["mirrors"]] == ["ev"]
        c.stop_mirror("ev")
        assert pid_gone(pid)
        assert c.mirrors() == []
        assert not protocol.mirror_file(data_dir, "ev").exists()
        with pytest.raises(errors.ShmlogError, match="no managed mirror named 'ev'"):
            c.stop_mirror("ev")
        # progress stays: the group committed everything it carried
        assert sum(p["committed"] for p in c.describe_group("mirror.ev")["partitions"]) == 3000


def test_cluster_mirror_in(data_dir, tansu):
    from confluent_kafka import Producer

    n = 3000
    create_remote_topic(tansu.bootstrap, "remote-in", 2)
    kp = Producer({"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True})
    for i in range(n):
        kp.produce("remote-in", value=b"value-%d" % i, key=_key(i), partition=i % 2, timestamp=TS0 + i,
                   headers=[("i", b"%d" % i)])
    assert kp.flush(30) == 0
    del kp
    with running_cluster(data_dir) as c:
        row = c.mirror("remote-in", from_=tansu.bootstrap, as_="local-in", settings=FAST_GROUP)
        assert row["name"] == "in.local-in" and row["direction"] == "in", row  # the default name
        wait_for(lambda: "local-in" in c.topics(), 30, 0.05, "the local topic")
        with c.consumer("local-in") as cons:
            got = collect(cons, n, 60)
        assert sorted(_index(m) for m in got) == list(range(n))
        for m in got:
            i = _index(m)
            assert (m.partition, m.key, m.headers, m.timestamp_ms) == (i % 2, _key(i), [("i", b"%d" % i)], TS0 + i)
        wait_for(lambda: (_row(c, "in.local-in") or {}).get("messages") == n, 20, 0.1, "the mirror to count them")
        c.stop_mirror("in.local-in")
        assert c.mirrors() == []


@pytest.mark.parametrize("kwargs, match", [
    ({"topics": "events", "to": "h:1", "name": "bad name"}, "invalid mirror name 'bad name'"),
    ({"topics": "events", "to": "h:1", "pattern": "ev.*"}, "topics .* or a pattern"),
    ({"to": "h:1"}, "topics .* or a pattern"),
    ({"topics": "events"}, "exactly one of to= .* or from_="),
    ({"topics": "events", "to": "h:1", "from_": "h:1"}, "exactly one of to= .* or from_="),
    ({"topics": "a,b", "from_": "h:1"}, "exactly one remote topic"),
    ({"topics": "a,b", "to": "h:1", "as_": "x"}, "exactly one local topic"),
    ({"topics": "events", "to": "h:1", "max_inflight": 5}, "unknown option 'max_inflight'.*max_in_flight"),
    ({"topics": "events", "to": "h:1", "max_in_flight": "5"},
     r"max_in_flight \(--max-in-flight\)='5' has type str: it must be a count of messages >= 1"),
    # options that only the bridge used to check: now refused in the caller
    ({"topics": "events", "to": "h:1", "max_in_flight": 0},
     r"max_in_flight \(--max-in-flight\)=0 is out of range: it must be a count of messages >= 1"),
    ({"topics": "events", "to": "h:1", "replication_factor": 0}, r"replication_factor.*=0 is out of range.*-1"),
    ({"topics": "events", "to": "h:1", "stall_timeout_s": 0}, "stall_timeout_s=0 is out of range: .*seconds > 0"),
    ({"topics": "events", "to": "h:1", "commit_interval_ms": -1}, "commit_interval_ms=-1 is out of range"),
    ({"topics": "events", "to": "h:1", "create_remote": 1}, "create_remote=1 has type int: it must be true or false"),
    ({"topics": "t", "from_": "h:1", "batch": 0}, "mirror in option batch=0 is out of range"),
    ({"topics": "t", "from_": "h:1", "topic_config": {"storage": "tape"}},
     r"option topic_config \(--topic-config\): invalid storage='tape'"),
    ({"topics": "t", "from_": "h:1", "topic_config": {"colour": "red"}}, "topic_config.*unknown topic setting 'colour'"),
    ({"topics": "events", "to": "h:1", "settings": {"enable.idempotence": "false"}},
     r"setting enable.idempotence='false' is not allowed: mirror out needs enable.idempotence=true"),
    ({"topics": "events", "to": "h:1", "settings": {"message.timeout.ms": 30000}},
     "message.timeout.ms=30000 is not allowed: mirror out needs message.timeout.ms=0"),
    ({"topics": "events", "to": "h:1", "settings": {"acks": ["all"]}}, "mirror setting 'acks'"),
    ({"to": "h:1", "pattern": "("}, "not a regular expression"),
])
def test_cluster_mirror_refuses_bad_specs_in_the_caller(data_dir, kwargs, match):
    with running_cluster(data_dir) as c:
        topics = kwargs.pop("topics", None)
        with pytest.raises(errors.InvalidConfig, match=match):
            c.mirror(topics, timeout=5, **kwargs)
        assert c.mirrors() == []


def test_mirror_start_op_checks_the_spec(data_dir):
    """The supervisor checks a spec from the socket as the caller does: an
    unknown direction never reaches a spec file or a child."""
    with running_cluster(data_dir) as c:
        spec = protocol.mirror_spec("out", "events", "h:1", name="ok")
        for bad, match in (({**spec, "direction": "sideways"}, "unknown mirror direction 'sideways'"),
                           ({**spec, "extra": 1}, "not a mirror spec"),
                           ({**spec, "name": "../x"}, "invalid mirror name")):
            with pytest.raises(errors.InvalidConfig, match=match):
                c.request("mirror_start", spec=bad)
        assert c.mirrors() == []
        assert not protocol.mirrors_dir(data_dir).exists() or not list(protocol.mirrors_dir(data_dir).iterdir())


def test_cluster_mirror_that_fails_names_its_log(data_dir):
    """A mirror whose process exits at start (a librdkafka setting that only
    librdkafka knows to refuse) fails Cluster.mirror with the reason and the
    log file, and stays registered (retried) until stop_mirror."""
    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=1, **ROOMY)
        t0 = time.monotonic()
        with pytest.raises(errors.ShmlogError, match=r"mirror bad failed to start .*librdkafka refuses a mirror "
                                                     r"setting.*no\.such\.setting.*mirrors/bad\.log") as exc:
            c.mirror("events", to="127.0.0.1:1", name="bad", settings={"no.such.setting": "1"})
        assert time.monotonic() - t0 < 25, "it failed fast, not at the timeout"
        assert "stop_mirror('bad')" in str(exc.value)
        row = _row(c, "bad")
        assert row["managed"] and row["exits"] >= 1, row
        c.stop_mirror("bad")
        assert c.mirrors() == []


def test_protocol_options_match_the_mirror_constructors():
    """protocol.MIRROR_OPTIONS (checked in the caller) names exactly the
    keyword options that MirrorOut and MirrorIn take."""
    common = {"self", "cluster", "topics", "topic", "to", "from_", "pattern", "remote_topic", "local_topic",
              "name", "config"}
    for direction, cls in (("out", MirrorOut), ("in", MirrorIn)):
        params = set(inspect.signature(cls.__init__).parameters) - common
        assert params == set(protocol.MIRROR_OPTIONS[direction]), (direction, params)
