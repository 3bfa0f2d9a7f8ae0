"""The Kafka wire protocol for shmlog: a listener that lets Kafka clients
(kcat, confluent-kafka, kafka-python, aiokafka) produce, fetch and join
consumer groups on the same topics, offsets and groups as shmlog's own
producers and consumers. Started by the supervisor as its own process when
the broker setting ``kafka_listener`` is set (``python -m shmlog.kafka``).

It is a client of the shared memory like any producer or consumer: it never
imports shmlog.broker.
"""
