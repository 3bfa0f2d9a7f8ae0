/* record_iter.h — one walk over a record section, shared by the record
 * codec (shmlog_codec_decode: shmlog's sections, unsigned length prefix) and
 * the Kafka batch translation (shmlog_kafka_records_to_section: Kafka's
 * records v2, zigzag length prefix). The two encodings differ only in that
 * prefix, so one bounds-checked parser serves both and a fix to it reaches
 * both paths. Inline on purpose: it runs per record on the read and produce
 * fast paths, and the compiler keeps the record's fields in registers.
 */
#ifndef SHMLOG_RECORD_ITER_H
#define SHMLOG_RECORD_ITER_H

#include <stddef.h>
#include <stdint.h>

#include "varint.h"

/* One record, as found by shmlog_record_next (pointers into the section). */
typedef struct {
    const uint8_t *body;      /* after the length prefix: attributes byte first */
    const uint8_t *end;       /* one past the record */
    int64_t ts_delta;
    const uint8_t *key;       /* key bytes (key_len > 0), else not meaningful */
    int64_t key_len;          /* -1 = null */
    const uint8_t *value;
    int64_t value_len;        /* -1 = null */
    const uint8_t *headers;   /* header section, count varint included */
    int64_t header_count;
} shmlog_record_t;

/* Parse the record at *pp (section ends at `end`) whose offset delta must be
 * `index` (frames and Kafka batches are dense: a producer writes 0..n-1).
 * kafka_len: the length prefix is zigzag (Kafka) rather than unsigned
 * (shmlog). Every length is bounds-checked before use; the whole record,
 * headers included, must fill exactly its length. On success advances *pp
 * past the record and returns 0; else -1 (malformed) and *pp is unchanged. */
static inline __attribute__((always_inline)) int
shmlog_record_next(const uint8_t **pp, const uint8_t *end, uint32_t index, int kafka_len,
                   shmlog_record_t *r)
{
    const uint8_t *p = *pp;
    uint64_t u;
    size_t n = get_varint(p, end, &u);
    if (!n)
        return -1;
    if (kafka_len) {
        int64_t s = unzigzag(u);
        u = s < 0 ? 0 : (uint64_t)s;
    }
    /* at least the attributes byte, and no further than the section */
    if (u < 1 || u > (uint64_t)(end - p - n))
        return -1;
    uint64_t blen = u;
    p += n;
    const uint8_t *rend = p + blen;
    r->body = p;
    r->end = rend;
    p++; /* record attributes: none defined yet */
    if (!(n = get_varint(p, rend, &u)))
        return -1;
    p += n;
    r->ts_delta = unzigzag(u);
    if (!(n = get_varint(p, rend, &u)))
        return -1;
    p += n;
    if (unzigzag(u) != (int64_t)index)
        return -1;
    if (!(n = get_varint(p, rend, &u)))
        return -1;
    p += n;
    int64_t l = unzigzag(u);
    if (l < -1 || l > rend - p)
        return -1;
    r->key = p;
    r->key_len = l;
    if (l > 0)
        p += l;
    if (!(n = get_varint(p, rend, &u)))
        return -1;
    p += n;
    l = unzigzag(u);
    if (l < -1 || l > rend - p)
        return -1;
    r->value = p;
    r->value_len = l;
    if (l > 0)
        p += l;
    r->headers = p;
    if (!(n = get_varint(p, rend, &u)))
        return -1;
    p += n;
    int64_t hcount = unzigzag(u);
    if (hcount < 0 || hcount > rend - p)
        return -1;
    for (int64_t j = 0; j < hcount; j++) {
        for (int part = 0; part < 2; part++) { /* header key (not null), value (nullable) */
            if (!(n = get_varint(p, rend, &u)))
                return -1;
            p += n;
            l = unzigzag(u);
            if (l < (part ? -1 : 0) || l > rend - p)
                return -1;
            if (l > 0)
                p += l;
        }
    }
    if (p != rend)
        return -1;
    r->header_count = hcount;
    *pp = rend;
    return 0;
}

#endif
