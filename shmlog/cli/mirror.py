"""`shmlog mirror out|in|list|stop`: mirrors to and from Kafka clusters.

`mirror out` and `mirror in` register a managed mirror (a spec file under
<data_dir>/mirrors/) that the supervisor runs as a child process and
restarts after a crash; `--foreground` runs it in this process instead,
until Ctrl-C. The mirror itself lives in shmlog.bridge; this module only
parses, registers and shows.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from .. import errors, protocol
from .common import kv_arg, out, print_json, table

START_WAIT = 30.0  # the supervisor scans every 0.5 s, a child starts in ~1 s (more under load)


def _setting(item: str) -> Tuple[str, str]:
    """-X key=value, passed to librdkafka as is (like kcat)."""
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _connect(args):
    from ..client.cluster import connect

    return connect(args.data_dir)


def _spec(args) -> Dict[str, Any]:
    """The spec as protocol.mirror_spec checks it (what Cluster.mirror sends)."""
    config = dict(args.X or [])
    options: Dict[str, Any] = {}
    if args.mirror_action == "out":
        if args.max_in_flight is not None:
            options["max_in_flight"] = args.max_in_flight
        if args.replication_factor is not None:
            options["replication_factor"] = args.replication_factor
        if bool(args.topic) == bool(args.pattern):
            raise errors.InvalidConfig("mirror out needs --topic T[,T2...] or --pattern RE (one of the two)")
        return protocol.mirror_spec("out", args.topic, args.to, pattern=args.pattern, as_=args.as_,
                                    name=args.name, settings=config, options=options)
    if args.topic_config:
        options["topic_config"] = dict(args.topic_config)
    return protocol.mirror_spec("in", [args.topic], getattr(args, "from"), as_=args.as_, name=args.name,
                                settings=config, options=options)


def _run_foreground(args, spec: Dict[str, Any]) -> int:
    import logging

    from ..bridge import spec as specmod

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with _connect(args) as cluster:
        m = specmod.build(cluster, spec)
        signal.signal(signal.SIGTERM, lambda *_: m.stop())
        signal.signal(signal.SIGINT, lambda *_: m.stop())
        print(f"mirror {m.name}: running in the foreground (Ctrl-C stops it)", file=sys.stderr)
        m.run()
    return 0


def cmd_start(args) -> int:
    from ..bridge import kafka_client
    from ..bridge import spec as specmod

    kafka_client.kafka()  # the missing extra is named here, not in a child's log
    spec = _spec(args)
    if args.foreground:
        return _run_foreground(args, spec)
    with _connect(args) as cluster:
        # build it once here: a bad setting fails now, with its message, not
        # in a child that the supervisor would restart forever
        specmod.build(cluster, spec)  # validates, starts nothing
        row = cluster.mirror(spec["topics"], pattern=spec["pattern"], as_=spec["as"], name=spec["name"],
                             settings=spec["config"], timeout=START_WAIT,
                             **{"to" if spec["direction"] == "out" else "from_": spec["bootstrap"]},
                             **spec["options"])
    print(f"mirror {row['name']}: running (pid {row['pid']}, state {row['state']}); "
          f"`shmlog mirror list` shows its rate and lag")
    return 0


def _running_cluster(args):
    """The cluster if a supervisor serves --data-dir, else None: a command
    that only reads or stops never starts a supervisor (which would also
    start every managed mirror)."""
    from ..client.cluster import connect

    if not Path(args.data_dir).is_dir():
        return None
    try:
        return connect(args.data_dir, start=False)
    except errors.BrokerNotRunning:
        return None


def cmd_list(args) -> int:
    cluster = _running_cluster(args)
    if cluster is None:
        # what the spec files say; nothing runs without a supervisor
        from ..broker.mirrors import mirror_rows

        rows = mirror_rows(Path(args.data_dir)) if Path(args.data_dir).is_dir() else []
        print(f"no supervisor is serving {Path(args.data_dir).absolute()}: no mirror runs"
              + (f"; the {len(rows)} managed mirror(s) below start with it (`shmlog serve`, or any "
                 f"command that starts it)" if rows else ""), file=sys.stderr)
    else:
        with cluster:
            rows = cluster.mirrors()
    if args.json:
        print_json(rows)
        return 0
    cells = []
    for r in rows:
        topics = ",".join(r.get("topics") or [r.get("local_topic") or r.get("topic") or "-"])
        cells.append((r["name"], r.get("direction", "?"), topics, r.get("bootstrap"), r.get("state", "?"),
                      r.get("pid"), f"{r.get('rate') or 0:.0f}", r.get("lag_messages"), r.get("lag_seconds"),
                      r.get("error") or r.get("last_exit") or ""))
    for line in table(cells, ("NAME", "DIR", "TOPICS", "REMOTE", "STATE", "PID", "MSG/S", "LAG", "LAG_S",
                              "ERROR")):
        out(line)
    return 0


def cmd_stop(args) -> int:
    cluster = _running_cluster(args)
    if cluster is None:
        protocol.check_mirror_name(args.name)
        known = protocol.mirror_file(args.data_dir, args.name, "spec").exists()
        raise errors.BrokerNotRunning(
            f"no supervisor is serving {Path(args.data_dir).absolute()}, so mirror {args.name} is not running"
            + (f"; it is registered and would start with the supervisor: start one (`shmlog serve`) and run "
               f"`shmlog mirror stop {args.name}` again" if known else f" (and no mirror named {args.name!r} "
                                                                        f"is registered)"),
            what=args.name)
    with cluster:
        cluster.stop_mirror(args.name)
    print(f"mirror {args.name}: stopped")
    return 0


def register(sub, add) -> None:
    """Add `shmlog mirror` to the parser (called by shmlog.cli.build_parser)."""
    p = add("mirror", "mirror topics to and from Kafka clusters (needs pip install 'shmlog[kafka]')")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    ms = p.add_subparsers(dest="mirror_action", metavar="ACTION")

    def action(name, help_):
        sp = ms.add_parser(name, help=help_, description=help_)
        sp.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="data dir (default $SHMLOG_DATA_DIR or ./shmlog-data)")
        return sp

    def common(sp):
        sp.add_argument("--as", dest="as_", default=None, metavar="NAME",
                        help="the topic's name on the other side (default: the same name)")
        sp.add_argument("--name", default=None, help="the mirror's name (default: derived from the topics)")
        sp.add_argument("-X", action="append", type=_setting, metavar="KEY=VALUE",
                        help="librdkafka setting, e.g. security.protocol=SASL_SSL (repeatable)")
        sp.add_argument("--foreground", action="store_true",
                        help="run in this process until Ctrl-C instead of under the supervisor")
        sp.set_defaults(func=cmd_start)

    sp = action("out", "mirror shmlog topics into a Kafka cluster")
    sp.add_argument("--topic", default=None, metavar="T[,T2...]", help="local topic(s)")
    sp.add_argument("--pattern", default=None, metavar="RE", help="every local topic whose name matches RE")
    sp.add_argument("--to", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap servers, host:port[,...]")
    sp.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                    help="messages sent but not yet committed (default 100000): the most a crash can duplicate")
    sp.add_argument("--replication-factor", type=int, default=None, metavar="N",
                    help="for remote topics the mirror creates (default: the cluster's default)")
    common(sp)

    sp = action("in", "mirror a Kafka topic into a shmlog topic")
    sp.add_argument("--topic", required=True, metavar="T", help="the remote topic")
    sp.add_argument("--from", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap servers, host:port[,...]")
    sp.add_argument("--topic-config", type=kv_arg, action="append", metavar="KEY=VALUE",
                    help="settings of the local topic if the mirror creates it, e.g. storage=disk")
    common(sp)

    sp = action("list", "managed and running mirrors with their state, rate and lag")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=cmd_list)

    sp = action("stop", "stop a managed mirror and forget it (its committed progress stays)")
    sp.add_argument("name", metavar="NAME")
    sp.set_defaults(func=cmd_stop)
