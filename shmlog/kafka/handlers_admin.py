"""ApiVersions, Metadata, FindCoordinator, CreateTopics, DeleteTopics.

One node, id 0, is every partition's leader, the controller and the group
coordinator. Handlers return plain dicts; protocol.encode fits them to the
version asked. They run in the listener's control thread (they may talk to
the supervisor), never in the event loop.
"""

from __future__ import annotations

from typing import Any, Dict, List

from .. import errors
from ..config import validate_topic_name
from . import protocol as P

NODE_ID = 0


def api_versions_body(version: int, error: int = P.NONE) -> bytes:
    keys = [{"api_key": k, "min_version": lo, "max_version": hi} for k, (lo, hi) in sorted(P.SUPPORTED.items())]
    return P.encode(P.API_VERSIONS, version, {"error_code": error, "api_keys": keys, "throttle_time": 0})


class Admin:
    def __init__(self, state):
        self.state = state

    def _broker(self) -> Dict[str, Any]:
        return {"node_id": NODE_ID, "host": self.state.host, "port": self.state.port, "rack": None}

    def metadata(self, req, version: int) -> Dict[str, Any]:
        st = self.state
        cluster = st.cluster
        names = None if req.topics is None else [t.name for t in req.topics]
        # v0 asks for all topics with an empty list; v1+ with null
        if version == 0 and names == []:
            names = None
        allow = getattr(req, "allow_auto_topic_creation", True) and st.auto_create
        known = cluster.topics()
        topics: List[Dict[str, Any]] = []
        for name in sorted(known) if names is None else names:
            info = known.get(name)
            if info is None and allow:
                try:
                    validate_topic_name(name)
                    info = cluster.create_topic(name, partitions=st.default_partitions)
                    st.log.info("auto-created topic %r for a Kafka client", name)
                except errors.TopicExists:
                    info = cluster.topics().get(name)
                except errors.ShmlogError as exc:
                    st.log.warning("could not auto-create %r: %s", name, exc)
                    topics.append({"error_code": P.INVALID_TOPIC_EXCEPTION, "name": name, "partitions": []})
                    continue
            if info is None:
                topics.append({"error_code": P.UNKNOWN_TOPIC_OR_PARTITION, "name": name, "partitions": []})
                continue
            try:
                st.map_topic(name)  # here, in the control thread: the data path finds it mapped
            except errors.ShmlogError:
                pass
            parts = [{"error_code": P.NONE, "partition_index": p.partition, "leader_id": NODE_ID,
                      "leader_epoch": -1, "replica_nodes": [NODE_ID], "isr_nodes": [NODE_ID],
                      "offline_replicas": []} for p in info.partitions]
            topics.append({"error_code": P.NONE, "name": name, "is_internal": False, "partitions": parts})
        return {"throttle_time": 0, "brokers": [self._broker()], "cluster_id": cluster.cluster_id or "shmlog",
                "controller_id": NODE_ID, "topics": topics}

    def find_coordinator(self, req, version: int) -> Dict[str, Any]:
        return {"throttle_time": 0, "error_code": P.NONE, "error_message": None, **self._broker()}

    def create_topics(self, req, version: int) -> Dict[str, Any]:
        cluster = self.state.cluster
        out = []
        for t in req.topics or ():
            code, msg = P.NONE, None
            n = t.num_partitions if t.num_partitions > 0 else self.state.default_partitions
            config = {}
            for c in t.configs or ():
                if c.name == "retention.ms" and c.value is not None:
                    try:
                        config["retention_ms"] = int(c.value)
                    except ValueError:
                        pass
            try:
                validate_topic_name(t.name)
                if not getattr(req, "validate_only", False):
                    cluster.create_topic(t.name, partitions=n, **config)
            except errors.TopicExists:
                code, msg = P.TOPIC_ALREADY_EXISTS, f"topic {t.name!r} already exists"
            except errors.InvalidTopic as exc:
                code, msg = P.INVALID_TOPIC_EXCEPTION, str(exc)
            except errors.InvalidConfig as exc:
                code, msg = P.INVALID_PARTITIONS, str(exc)
            except errors.ShmlogError as exc:
                code, msg = P.UNKNOWN_SERVER_ERROR, str(exc)
            out.append({"name": t.name, "error_code": code, "error_message": msg})
        return {"throttle_time": 0, "topics": out}

    def delete_topics(self, req, version: int) -> Dict[str, Any]:
        cluster = self.state.cluster
        out = []
        for name in req.topic_names or ():
            code = P.NONE
            try:
                cluster.delete_topic(name)
            except errors.UnknownTopic:
                code = P.UNKNOWN_TOPIC_OR_PARTITION
            except errors.ShmlogError:
                code = P.UNKNOWN_SERVER_ERROR
            self.state.forget_topic(name)
            out.append({"name": name, "error_code": code})
        return {"throttle_time": 0, "responses": out}
