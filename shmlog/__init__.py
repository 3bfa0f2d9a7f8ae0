"""shmlog: Kafka's model — topics, partitions, dense offsets, consumer groups,
retention, replay — for the processes of one host, with the data path in
POSIX shared memory.

    import shmlog
    cluster = shmlog.connect("./data")
"""

from .client.cluster import Cluster, PartitionInfo, TopicInfo, connect
from .client.consumer import Consumer, Message, MessageBatch
from .client.producer import Producer, RecordMetadata
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
