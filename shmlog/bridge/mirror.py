"""Mirrors between shmlog topics and a Kafka cluster (confluent-kafka).

A mirror is a pair of long-running clients whose progress is a committed
offset on the side it reads, committed only after the other side
acknowledged:

- MirrorOut: a shmlog consumer group ("mirror.<name>") + an idempotent
  Kafka producer. A shmlog offset is committed only once Kafka's delivery
  report covers it, so a SIGKILLed mirror resumes from there and resends at
  most what was in flight (DUPLICATE_BOUND in base.py).
- MirrorIn: a Kafka consumer group ("shmlog-mirror-<name>", auto-commit off)
  + a shmlog producer. The Kafka offset is committed only after the batch is
  committed in shmlog (and fsynced, for disk topics).

Neither side ever drops a message: a slow or absent Kafka slows the mirror
(librdkafka's queue fills, produce() is retried), a full memory topic blocks
the inbound mirror (send_batch is retried). While the remote is down the
mirror keeps retrying with backoff and says why in its status file
(<data_dir>/mirrors/<name>.status.json, rewritten every second), which
`shmlog mirror list` shows.

The bridge must never import shmlog.broker: a mirror is a client like any
other. Here: open_mirror(), the Python form; base.py, mirror_out.py and
mirror_in.py hold the rest.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

from .. import errors
from .base import (  # noqa: F401 (the names of mirrors and their files, used by the CLI and tests)
    DEFAULT_MAX_IN_FLIGHT,
    DUPLICATE_BOUND,
    _Mirror,
    check_name,
    default_name,
    mirrors_dir,
    status_path,
)
from .mirror_in import MirrorIn
from .mirror_out import MirrorOut


def open_mirror(cluster, topics: Union[str, Sequence[str], None] = None, *, to: Optional[str] = None,
           from_: Optional[str] = None, pattern: Optional[str] = None, as_: Optional[str] = None,
           name: Optional[str] = None, config: Optional[Dict[str, Any]] = None, start: bool = True,
           **options: Any) -> _Mirror:
    """Mirror shmlog topics out to Kafka (to=BOOTSTRAP) or a Kafka topic in
    (from_=BOOTSTRAP). as_ names the topic on the other side. With
    start=True the mirror runs in a background thread until close()."""
    if (to is None) == (from_ is None):
        raise errors.InvalidConfig("mirror needs exactly one of to= (out to Kafka) or from_= (in from Kafka)")
    if to is not None:
        m: _Mirror = MirrorOut(cluster, topics, to=to, pattern=pattern, remote_topic=as_, name=name,
                               config=config, **options)
    else:
        if pattern is not None:
            raise errors.InvalidConfig("mirror in takes one topic, not a pattern")
        if not isinstance(topics, str):
            topics = ",".join(topics or [])
        m = MirrorIn(cluster, topics, from_=from_, local_topic=as_, name=name, config=config, **options)
    return m.start() if start else m
