/* partitioner.h — Kafka's murmur2 key partitioner, so a key lands on the
 * same partition number as it would in Kafka (toPositive(murmur2) % n). */
#ifndef SHMLOG_PARTITIONER_H
#define SHMLOG_PARTITIONER_H

#include <stddef.h>
#include <stdint.h>

int32_t shmlog_murmur2(const uint8_t *data, size_t len);
/* toPositive(murmur2(key)) % num_partitions in one call: send() passes a
 * bytes key straight to the char * (cffi hands over its buffer, no copy) */
uint32_t shmlog_key_partition(const char *key, size_t len, uint32_t num_partitions);
/* partitions of n keys given as a blob plus lengths, written to out */
void shmlog_murmur2_partitions(const uint8_t *keys, const int32_t *lens, uint32_t n,
                               uint32_t num_partitions, uint32_t *out);

#endif
