/* varint.h — the varints of Kafka's record v2 (and so of shmlog's record
 * section): LEB128 unsigned varints and zigzag for signed values. Shared by
 * the record codec and the Kafka batch translation; every read is bounded
 * by `end`. */
#ifndef SHMLOG_VARINT_H
#define SHMLOG_VARINT_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

static inline size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* returns bytes consumed, 0 on truncation or an over-long encoding */
static inline size_t get_varint_slow(const uint8_t *p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    unsigned shift = 0;
    const uint8_t *s = p;
    while (p < end && shift < 64) {
        uint8_t b = *p++;
        if (shift == 63 && b > 1)
            return 0; /* bits beyond 64: reject, never truncate silently */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return (size_t)(p - s);
        }
        shift += 7;
    }
    return 0;
}

/* Nearly every varint of a record is one or two bytes (lengths under 8 KiB,
 * deltas): those without the loop; decode is ~40% of a read's C time. */
static inline size_t get_varint(const uint8_t *p, const uint8_t *end, uint64_t *out)
{
    if (p < end && !(p[0] & 0x80)) {
        *out = p[0];
        return 1;
    }
    if (end - p >= 2 && !(p[1] & 0x80)) {
        *out = (uint64_t)(p[0] & 0x7f) | ((uint64_t)p[1] << 7);
        return 2;
    }
    return get_varint_slow(p, end, out);
}

#endif
