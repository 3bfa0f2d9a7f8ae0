"""shmlog: Kafka's model — topics, partitions, dense offsets, consumer groups,
retention, replay — for the processes of one host, with the data path in
POSIX shared memory.

    import shmlog
    cluster = shmlog.connect("./data")
"""

from .cluster import Cluster, PartitionInfo, TopicInfo, connect
from .consumer import Consumer, Message, MessageBatch
from .errors import (
    BrokerNotRunning,
    BufferFull,
    Closed,
    CorruptBatch,
    FencedMember,
    GroupError,
    InvalidConfig,
    InvalidTopic,
    MessageTooLarge,
    OffsetOutOfRange,
    ShmlogError,
    StorageError,
    TopicExists,
    UnknownPartition,
    UnknownTopic,
)
from .producer import Producer, RecordMetadata

__version__ = "0.1.0"

__all__ = [
    "BrokerNotRunning",
    "BufferFull",
    "Closed",
    "Cluster",
    "Consumer",
    "CorruptBatch",
    "FencedMember",
    "GroupError",
    "InvalidConfig",
    "InvalidTopic",
    "Message",
    "MessageBatch",
    "MessageTooLarge",
    "OffsetOutOfRange",
    "PartitionInfo",
    "Producer",
    "RecordMetadata",
    "ShmlogError",
    "StorageError",
    "TopicExists",
    "TopicInfo",
    "UnknownPartition",
    "UnknownTopic",
    "connect",
]
