"""One partition over shared memory, the record codec, the partitioner and the cffi extension: what every process of shmlog maps and calls. Never talks to the supervisor."""
