"""`from shmlog import aio`: the asyncio API (see shmlog.client.aio)."""

from .client.aio import AIOCluster, AIOConsumer, AIOProducer, connect

__all__ = ["AIOCluster", "AIOConsumer", "AIOProducer", "connect"]
