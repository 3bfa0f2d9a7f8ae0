/* partitioner.c — see partitioner.h. Arithmetic is done on uint32_t so the
 * wrap-around Java gets from int overflow is defined behaviour here. */
#include "partitioner.h"

int32_t shmlog_murmur2(const uint8_t *data, size_t len)
{
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ (uint32_t)len;
    size_t n4 = len / 4;
    for (size_t i = 0; i < n4; i++) {
        const uint8_t *p = data + i * 4;
        uint32_t k = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                     ((uint32_t)p[3] << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const uint8_t *tail = data + (len & ~(size_t)3);
    switch (len % 4) {
    case 3:
        h ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

void shmlog_murmur2_partitions(const uint8_t *keys, const int32_t *lens, uint32_t n,
                               uint32_t num_partitions, uint32_t *out)
{
    for (uint32_t i = 0; i < n; i++) {
        size_t l = lens[i] > 0 ? (size_t)lens[i] : 0;
        out[i] = ((uint32_t)shmlog_murmur2(keys, l) & 0x7fffffffu) % num_partitions;
        keys += l;
    }
}

uint32_t shmlog_key_partition(const char *key, size_t len, uint32_t num_partitions)
{
    return ((uint32_t)shmlog_murmur2((const uint8_t *)key, len) & 0x7fffffffu) % num_partitions;
}
