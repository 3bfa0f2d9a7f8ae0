"""shmlog: Kafka's model for the processes of one host, over shared memory."""
from .errors import *  # noqa: F401,F403
