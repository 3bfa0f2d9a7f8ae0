/* kafka_batch.c — see kafka_batch.h. No allocation; big-endian fields are
 * read and written byte by byte (no alignment or aliasing assumptions). */
#include "kafka_batch.h"

#include <errno.h>
#include <string.h>

#include "crc32c.h"
#include "record_iter.h"
#include "varint.h"

static inline uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}
static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint8_t *put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}
static inline uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}
static inline uint8_t *put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

int64_t shmlog_kafka_batch_parse(const uint8_t *buf, size_t len, shmlog_kafka_batch_t *out)
{
    if (len < SHMLOG_KAFKA_BATCH_HEADER)
        return -EBADMSG;
    int32_t blen = (int32_t)be32(buf + 8);
    if (blen < SHMLOG_KAFKA_BATCH_HEADER - 12 || (uint64_t)blen + 12 > len)
        return -EBADMSG;
    if (buf[16] != 2)
        return -EBADMSG; /* magic 0/1 message sets are not accepted (Produce < v3) */
    out->base_offset = (int64_t)be64(buf);
    out->batch_length = blen;
    out->leader_epoch = (int32_t)be32(buf + 12);
    out->crc = be32(buf + 17);
    out->attributes = (int16_t)be16(buf + 21);
    out->last_offset_delta = (int32_t)be32(buf + 23);
    out->first_timestamp = (int64_t)be64(buf + 27);
    out->max_timestamp = (int64_t)be64(buf + 35);
    out->producer_id = (int64_t)be64(buf + 43);
    out->producer_epoch = (int16_t)be16(buf + 51);
    out->base_sequence = (int32_t)be32(buf + 53);
    out->record_count = (int32_t)be32(buf + 57);
    out->records_pos = SHMLOG_KAFKA_BATCH_HEADER;
    out->records_len = (uint32_t)blen + 12 - SHMLOG_KAFKA_BATCH_HEADER;
    /* the CRC covers attributes to the end of the batch */
    if (shmlog_crc32c(0, buf + 21, (size_t)blen + 12 - 21) != out->crc)
        return -EILSEQ;
    return (int64_t)blen + 12;
}

int64_t shmlog_kafka_records_to_section(const uint8_t *p, size_t len, uint32_t count,
                                        uint8_t *dst, size_t cap, int64_t *max_ts_delta)
{
    const uint8_t *end = p + len;
    uint8_t *w = dst, *wend = dst + cap;
    int64_t max_delta = INT64_MIN;
    for (uint32_t i = 0; i < count; i++) {
        shmlog_record_t r;
        if (shmlog_record_next(&p, end, i, 1, &r))
            return -EBADMSG;
        if (r.ts_delta > max_delta)
            max_delta = r.ts_delta;
        size_t blen = (size_t)(r.end - r.body);
        /* everything after the length is the same bytes in both encodings */
        if ((size_t)(wend - w) < varint_size(blen) + blen)
            return -ENOSPC;
        w = put_varint(w, blen);
        memcpy(w, r.body, blen);
        w += blen;
    }
    if (p != end)
        return -EBADMSG;
    *max_ts_delta = count ? max_delta : 0;
    return (int64_t)(w - dst);
}

uint64_t shmlog_kafka_encode_bound(const shmlog_records_out_t *out, uint32_t n)
{
    uint64_t total = SHMLOG_KAFKA_BATCH_HEADER;
    for (uint32_t i = 0; i < n; i++) {
        /* length, attributes, two deltas and two lengths: at most 5*10+1 */
        total += 51 + (out->key_lens[i] > 0 ? (uint64_t)out->key_lens[i] : 0) +
                 (out->value_lens[i] > 0 ? (uint64_t)out->value_lens[i] : 0) +
                 (out->header_lens[i] ? out->header_lens[i] : 1);
    }
    return total;
}

/* The bytes after record i's length prefix when it is encoded in a batch
 * whose first record has offset base_off and timestamp first_ts. */
static inline size_t record_body(const shmlog_records_out_t *out, uint32_t i, uint64_t base_off,
                                 int64_t first_ts)
{
    int32_t kl = out->key_lens[i], vl = out->value_lens[i];
    uint32_t hl = out->header_lens[i];
    return 1 + varint_size(zigzag(out->timestamps[i] - first_ts)) +
           varint_size(zigzag((int64_t)(out->offsets[i] - base_off))) + varint_size(zigzag(kl)) +
           (kl > 0 ? (size_t)kl : 0) + varint_size(zigzag(vl)) + (vl > 0 ? (size_t)vl : 0) +
           (hl ? hl : 1);
}

uint32_t shmlog_kafka_encode_fit(const shmlog_records_out_t *out, uint32_t n, uint64_t budget)
{
    if (n == 0 || budget < SHMLOG_KAFKA_BATCH_HEADER)
        return 0;
    uint64_t base_off = out->offsets[0], total = SHMLOG_KAFKA_BATCH_HEADER;
    int64_t first_ts = out->timestamps[0];
    for (uint32_t i = 0; i < n; i++) {
        size_t body = record_body(out, i, base_off, first_ts);
        total += varint_size(zigzag((int64_t)body)) + body;
        if (total > budget)
            return i;
    }
    return n;
}

int64_t shmlog_kafka_encode(const uint8_t *base, const shmlog_records_out_t *out, uint32_t n,
                            uint8_t *dst, size_t cap)
{
    if (n == 0 || shmlog_kafka_encode_bound(out, n) > cap)
        return -ENOSPC;
    uint64_t base_off = out->offsets[0];
    int64_t first_ts = out->timestamps[0], max_ts = first_ts;
    for (uint32_t i = 1; i < n; i++)
        if (out->timestamps[i] > max_ts)
            max_ts = out->timestamps[i];
    uint8_t *p = dst + SHMLOG_KAFKA_BATCH_HEADER;
    for (uint32_t i = 0; i < n; i++) {
        int32_t kl = out->key_lens[i], vl = out->value_lens[i];
        uint32_t hl = out->header_lens[i];
        uint64_t td = zigzag(out->timestamps[i] - first_ts);
        uint64_t od = zigzag((int64_t)(out->offsets[i] - base_off));
        size_t body = record_body(out, i, base_off, first_ts);
        p = put_varint(p, zigzag((int64_t)body));
        *p++ = 0;
        p = put_varint(p, td);
        p = put_varint(p, od);
        p = put_varint(p, zigzag(kl));
        if (kl > 0) {
            memcpy(p, base + out->key_pos[i], (size_t)kl);
            p += kl;
        }
        p = put_varint(p, zigzag(vl));
        if (vl > 0) {
            memcpy(p, base + out->value_pos[i], (size_t)vl);
            p += vl;
        }
        if (hl) { /* the header section as stored: count included, Kafka's bytes */
            memcpy(p, base + out->header_pos[i], hl);
            p += hl;
        } else {
            *p++ = 0;
        }
    }
    size_t total = (size_t)(p - dst);
    uint8_t *h = dst;
    h = put64(h, base_off);
    h = put32(h, (uint32_t)(total - 12));
    h = put32(h, 0xFFFFFFFFu); /* partition leader epoch: -1 throughout */
    *h++ = 2;                  /* magic */
    uint8_t *crc_at = h;
    h += 4;
    h = put16(h, 0); /* attributes: uncompressed, CreateTime */
    h = put32(h, (uint32_t)(out->offsets[n - 1] - base_off));
    h = put64(h, (uint64_t)first_ts);
    h = put64(h, (uint64_t)max_ts);
    h = put64(h, UINT64_MAX); /* producer id -1: no idempotence state to hand out */
    h = put16(h, 0xFFFF);
    h = put32(h, 0xFFFFFFFFu);
    put32(h, n);
    put32(crc_at, shmlog_crc32c(0, dst + 21, total - 21));
    return (int64_t)total;
}
