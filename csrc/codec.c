/* codec.c — see codec.h. No allocation; every read is bounds-checked. */
#include "codec.h"

#include <errno.h>
#include <string.h>

#include "pickle_bytes.h"
#include "record_iter.h"
#include "varint.h"

void shmlog_codec_timestamps(const shmlog_batch_in_t *in, int64_t *first, int64_t *max)
{
    if (!in->timestamps || in->count == 0) {
        *first = *max = in->timestamp;
        return;
    }
    int64_t f = in->timestamps[0], m = f;
    for (uint32_t i = 1; i < in->count; i++)
        if (in->timestamps[i] > m)
            m = in->timestamps[i];
    *first = f;
    *max = m;
}

/* size of one record's body (after its length varint) */
static inline size_t record_body_size(const shmlog_batch_in_t *in, uint32_t i, int64_t first_ts)
{
    int64_t ts_delta = in->timestamps ? in->timestamps[i] - first_ts : 0;
    int32_t kl = in->keys || in->key_ptrs ? in->key_lens[i] : -1;
    int32_t vl = in->value_lens[i];
    size_t n = 1 + varint_size(zigzag(ts_delta)) + varint_size(zigzag((int64_t)i));
    n += varint_size(zigzag(kl)) + (kl > 0 ? (size_t)kl : 0);
    n += varint_size(zigzag(vl)) + (vl > 0 ? (size_t)vl : 0);
    n += in->headers || in->header_ptrs ? (in->header_lens[i] ? in->header_lens[i] : 1) : 1;
    return n;
}

int64_t shmlog_codec_encoded_size(const shmlog_batch_in_t *in)
{
    if (!in || in->count == 0 || !in->value_lens)
        return -EINVAL;
    int64_t first, max;
    shmlog_codec_timestamps(in, &first, &max);
    uint64_t total = 0;
    for (uint32_t i = 0; i < in->count; i++) {
        if (in->value_lens[i] < -1 || ((in->keys || in->key_ptrs) && in->key_lens[i] < -1))
            return -EINVAL;
        size_t body = record_body_size(in, i, first);
        total += varint_size(body) + body;
        if (total > (uint64_t)INT32_MAX)
            return -EMSGSIZE;
    }
    return (int64_t)total;
}

/* the records of a batch shmlog_codec_encoded_size accepted, into dst:
 * each record's size is checked against what is left of cap before it is
 * written (-ENOSPC), so a batch sized a moment ago is not sized again */
static int64_t encode_records(const shmlog_batch_in_t *in, uint8_t *dst, size_t cap)
{
    int64_t first, max;
    shmlog_codec_timestamps(in, &first, &max);
    uint8_t *p = dst, *end = dst + cap;
    const uint8_t *v = in->values, *k = in->keys, *h = in->headers;
    for (uint32_t i = 0; i < in->count; i++) {
        size_t body = record_body_size(in, i, first);
        if ((size_t)(end - p) < varint_size(body) + body)
            return -ENOSPC;
        p = put_varint(p, body);
        *p++ = 0; /* record attributes: none defined yet */
        p = put_varint(p, zigzag(in->timestamps ? in->timestamps[i] - first : 0));
        p = put_varint(p, zigzag((int64_t)i));
        int32_t kl = k || in->key_ptrs ? in->key_lens[i] : -1;
        p = put_varint(p, zigzag(kl));
        if (kl > 0) {
            if (in->key_ptrs) {
                memcpy(p, in->key_ptrs[i], (size_t)kl);
            } else {
                memcpy(p, k, (size_t)kl);
                k += kl;
            }
            p += kl;
        }
        int32_t vl = in->value_lens[i];
        p = put_varint(p, zigzag(vl));
        if (vl > 0) {
            if (in->value_ptrs) {
                memcpy(p, in->value_ptrs[i], (size_t)vl);
            } else {
                memcpy(p, v, (size_t)vl);
                v += vl;
            }
            p += vl;
        }
        if ((h || in->header_ptrs) && in->header_lens[i]) {
            if (in->header_ptrs) {
                memcpy(p, in->header_ptrs[i], in->header_lens[i]);
            } else {
                memcpy(p, h, in->header_lens[i]);
                h += in->header_lens[i];
            }
            p += in->header_lens[i];
        } else {
            *p++ = 0; /* zero headers */
        }
    }
    return (int64_t)(p - dst);
}

int64_t shmlog_codec_encode(const shmlog_batch_in_t *in, uint8_t *dst, size_t cap)
{
    int64_t need = shmlog_codec_encoded_size(in);
    if (need < 0)
        return need;
    if ((size_t)need > cap)
        return -ENOSPC;
    return encode_records(in, dst, cap);
}

int64_t shmlog_codec_encode_sized(const shmlog_batch_in_t *in, uint8_t *dst, size_t len)
{
    if (!in || in->count == 0 || !in->value_lens)
        return -EINVAL;
    return encode_records(in, dst, len);
}

int64_t shmlog_codec_decode(const uint8_t *payload, size_t len, uint32_t record_count,
                            uint64_t base_offset, int64_t first_timestamp,
                            uint64_t pos_base, uint64_t skip_below,
                            shmlog_records_out_t *out, uint32_t index)
{
    const uint8_t *p = payload, *end = payload + len;
    uint32_t w = index;
    /* in locals: with -fno-strict-aliasing every store into the arrays would
     * make the compiler reload these pointers from *out */
    const uint32_t capacity = out->capacity;
    uint64_t *o_offsets = out->offsets, *o_key_pos = out->key_pos, *o_value_pos = out->value_pos,
             *o_header_pos = out->header_pos;
    int64_t *o_timestamps = out->timestamps;
    int32_t *o_key_lens = out->key_lens, *o_value_lens = out->value_lens;
    uint32_t *o_header_lens = out->header_lens;
    uint32_t flags = 0;
    for (uint32_t i = 0; i < record_count; i++) {
        shmlog_record_t r;
        if (shmlog_record_next(&p, end, i, 0, &r))
            return -EBADMSG; /* validated here so Python can parse headers blindly */
        uint64_t off = base_offset + i;
        if (off < skip_below)
            continue;
        if (w >= capacity) {
            out->flags |= flags;
            return (int64_t)(w - index); /* partial: the caller resumes by offset */
        }
        o_offsets[w] = off;
        o_timestamps[w] = first_timestamp + r.ts_delta;
        o_key_pos[w] = pos_base + (uint64_t)(r.key - payload);
        o_key_lens[w] = (int32_t)r.key_len;
        o_value_pos[w] = pos_base + (uint64_t)(r.value - payload);
        o_value_lens[w] = (int32_t)r.value_len;
        o_header_pos[w] = pos_base + (uint64_t)(r.headers - payload);
        o_header_lens[w] = r.header_count ? (uint32_t)(r.end - r.headers) : 0;
        flags |= (r.key_len >= 0 ? SHMLOG_REC_KEYS : 0u) | (r.header_count ? SHMLOG_REC_HEADERS : 0u) |
                 (r.value_len < 0 ? SHMLOG_REC_NULLS : 0u);
        w++;
    }
    out->flags |= flags;
    if (p != end)
        return -EBADMSG;
    return (int64_t)(w - index);
}

int64_t shmlog_codec_values_pickle(const uint8_t *base, const uint64_t *pos, const int32_t *lens,
                                   uint32_t n, uint8_t *dst, size_t cap)
{
    /* A list of bytes as a pickle (protocol 3) opcode stream: PROTO,
     * EMPTY_LIST, MARK, one SHORT_BINBYTES/BINBYTES/NONE per value, APPENDS,
     * STOP. Every opcode and length is written here, so the stream is well
     * formed whatever the values hold; pickle.loads then builds the list and
     * its bytes objects at C speed, without a slice per value in Python. */
    size_t need = 5;
    for (uint32_t i = 0; i < n; i++)
        need += lens[i] < 0 ? 1 : (size_t)lens[i] + (lens[i] < 256 ? 2 : 5);
    if (need > cap)
        return -ENOSPC;
    uint8_t *p = dst;
    *p++ = 0x80;
    *p++ = 3;
    *p++ = ']';
    *p++ = '(';
    for (uint32_t i = 0; i < n; i++) {
        int32_t l = lens[i];
        if (l < 0) {
            *p++ = 'N';
            continue;
        }
        if (l < 256) {
            *p++ = 'C';
            *p++ = (uint8_t)l;
        } else {
            *p++ = 'B';
            uint32_t u = (uint32_t)l;
            *p++ = (uint8_t)u;
            *p++ = (uint8_t)(u >> 8);
            *p++ = (uint8_t)(u >> 16);
            *p++ = (uint8_t)(u >> 24);
        }
        memcpy(p, base + pos[i], (size_t)l);
        p += l;
    }
    *p++ = 'e';
    *p++ = '.';
    return (int64_t)(p - dst);
}

/* ---------------------------------------------------------------- pickle
 * Opcodes of pickle protocol 3 that the streams below use. Every opcode and
 * length is written here, so a stream is well formed whatever the records
 * hold; pickle.loads builds the objects at C speed. */
#define PK_PROTO 0x80
#define PK_MARK '('
#define PK_TUPLE 't'
#define PK_STOP '.'
#define PK_NONE 'N'
#define PK_EMPTY_LIST ']'
#define PK_APPENDS 'e'
#define PK_BININT 'J'
#define PK_LONG1 0x8a
#define PK_SHORT_BINBYTES 'C'
#define PK_BINBYTES 'B'

static uint8_t *pk_int(uint8_t *p, int64_t v)
{
    if (v >= 0 && v <= INT32_MAX) {
        uint32_t u = (uint32_t)v;
        *p++ = PK_BININT;
        memcpy(p, &u, 4); /* little-endian: x86-64 and aarch64 */
        return p + 4;
    }
    *p++ = PK_LONG1;
    *p++ = 8; /* two's complement, little-endian */
    memcpy(p, &v, 8);
    return p + 8;
}

static uint8_t *pk_bytes(uint8_t *p, const uint8_t *src, int32_t len)
{
    if (len < 0) {
        *p++ = PK_NONE;
        return p;
    }
    if (len < 256) {
        *p++ = PK_SHORT_BINBYTES;
        *p++ = (uint8_t)len;
    } else {
        uint32_t u = (uint32_t)len;
        *p++ = PK_BINBYTES;
        memcpy(p, &u, 4);
        p += 4;
    }
    memcpy(p, src, (size_t)len);
    return p + len;
}

int64_t shmlog_codec_result_pickle(const uint8_t *base, const shmlog_records_out_t *out, uint32_t n,
                                   uint64_t first_seq, uint64_t bytes, uint8_t *dst, size_t cap)
{
    int keys = (out->flags & SHMLOG_REC_KEYS) != 0;
    int dense = 1, same_ts = 1;
    size_t need = 96 + (size_t)n * 20; /* framing, and room for two int lists */
    for (uint32_t i = 0; i < n; i++) {
        need += (out->value_lens[i] < 0 ? 0 : (size_t)out->value_lens[i]) + 5;
        if (keys)
            need += (out->key_lens[i] < 0 ? 0 : (size_t)out->key_lens[i]) + 5;
        if (i) {
            dense &= out->offsets[i] == out->offsets[i - 1] + 1;
            same_ts &= out->timestamps[i] == out->timestamps[0];
        }
    }
    if (need > cap)
        return -ENOSPC;
    uint8_t *p = dst;
    *p++ = PK_PROTO;
    *p++ = 3;
    *p++ = PK_MARK;
    *p++ = PK_EMPTY_LIST; /* values */
    *p++ = PK_MARK;
    for (uint32_t i = 0; i < n; i++)
        p = pk_bytes(p, base + out->value_pos[i], out->value_lens[i]);
    *p++ = PK_APPENDS;
    if (keys) {
        *p++ = PK_EMPTY_LIST;
        *p++ = PK_MARK;
        for (uint32_t i = 0; i < n; i++)
            p = pk_bytes(p, base + out->key_pos[i], out->key_lens[i]);
        *p++ = PK_APPENDS;
    } else {
        *p++ = PK_NONE;
    }
    if (dense) {
        *p++ = PK_NONE;
    } else {
        *p++ = PK_EMPTY_LIST;
        *p++ = PK_MARK;
        for (uint32_t i = 0; i < n; i++)
            p = pk_int(p, (int64_t)out->offsets[i]);
        *p++ = PK_APPENDS;
    }
    p = pk_int(p, n ? (int64_t)out->offsets[0] : 0);
    if (same_ts) {
        *p++ = PK_NONE;
    } else {
        *p++ = PK_EMPTY_LIST;
        *p++ = PK_MARK;
        for (uint32_t i = 0; i < n; i++)
            p = pk_int(p, out->timestamps[i]);
        *p++ = PK_APPENDS;
    }
    p = pk_int(p, n ? out->timestamps[0] : 0);
    p = pk_int(p, (int64_t)first_seq);
    p = pk_int(p, (int64_t)bytes);
    *p++ = PK_TUPLE;
    *p++ = PK_STOP;
    return (int64_t)(p - dst);
}

/* ------------------------------------------------- values as a pickled list
 * A producer hands over an unkeyed batch as the pickle of its list of values
 * (protocol 3 without memo: PROTO 3, EMPTY_LIST, then groups of MARK items
 * APPENDS or single item APPEND, then STOP; items SHORT_BINBYTES, BINBYTES or
 * NONE). pickle writes it at C speed and it carries every length, so Python
 * never builds a length array or a joined copy. Anything else in the stream
 * is -EPROTO, and the caller falls back to columns. */
typedef struct {
    const uint8_t *p, *end;
    int in_mark;
} pk_iter_t;

static int pk_item(pk_iter_t *it, const uint8_t **v, int32_t *len)
{
    int rc = shmlog_pickle_bytes(&it->p, it->end, v, len);
    return rc < 0 ? rc : 1;
}

/* 1 with the next value, 0 at a well-formed end, -EPROTO */
static int pk_next(pk_iter_t *it, const uint8_t **v, int32_t *len)
{
    for (;;) {
        if (it->p >= it->end)
            return -EPROTO;
        uint8_t op = *it->p;
        if (it->in_mark) {
            if (op == PK_APPENDS) {
                it->p++;
                it->in_mark = 0;
                continue;
            }
            return pk_item(it, v, len);
        }
        if (op == PK_MARK) {
            it->p++;
            it->in_mark = 1;
            continue;
        }
        if (op == PK_STOP)
            return it->p + 1 == it->end ? 0 : -EPROTO;
        int rc = pk_item(it, v, len);
        if (rc < 0)
            return rc;
        if (it->p >= it->end || *it->p != 'a') /* APPEND */
            return -EPROTO;
        it->p++;
        return 1;
    }
}

static int pk_start(pk_iter_t *it, const uint8_t *s, size_t len)
{
    if (len < 4 || s[0] != PK_PROTO || s[1] != 3 || s[2] != PK_EMPTY_LIST)
        return -EPROTO;
    it->p = s + 3;
    it->end = s + len;
    it->in_mark = 0;
    return 0;
}

/* a value-only record: attributes, ts delta 0, offset delta, null key, value, no headers */
static inline size_t plain_body_size(uint32_t i, int32_t vl)
{
    return 1 + 1 + varint_size(zigzag((int64_t)i)) + 1 + varint_size(zigzag(vl)) +
           (vl > 0 ? (size_t)vl : 0) + 1;
}

int64_t shmlog_codec_pickled_size(const uint8_t *s, size_t len, int32_t max_value,
                                  uint32_t *count)
{
    pk_iter_t it;
    if (pk_start(&it, s, len) < 0)
        return -EPROTO;
    uint64_t total = 0;
    uint32_t n = 0;
    const uint8_t *v;
    int32_t vl;
    int rc;
    while ((rc = pk_next(&it, &v, &vl)) > 0) {
        if (vl > max_value)
            return -EMSGSIZE;
        size_t body = plain_body_size(n, vl);
        total += varint_size(body) + body;
        if (total > (uint64_t)INT32_MAX || ++n == UINT32_MAX)
            return -E2BIG;
    }
    if (rc < 0)
        return rc;
    if (n == 0)
        return -EINVAL;
    *count = n;
    return (int64_t)total;
}

int64_t shmlog_codec_pickled_encode(const uint8_t *s, size_t len, uint8_t *dst, size_t cap)
{
    pk_iter_t it;
    if (pk_start(&it, s, len) < 0)
        return -EPROTO;
    uint8_t *p = dst, *end = dst + cap;
    const uint8_t *v;
    int32_t vl;
    int rc;
    for (uint32_t i = 0; (rc = pk_next(&it, &v, &vl)) > 0; i++) {
        size_t body = plain_body_size(i, vl);
        if ((size_t)(end - p) < varint_size(body) + body)
            return -ENOSPC; /* the stream changed since it was sized */
        p = put_varint(p, body);
        *p++ = 0;                      /* record attributes */
        *p++ = 0;                      /* timestamp delta: the batch's */
        p = put_varint(p, zigzag((int64_t)i));
        *p++ = 1;                      /* zigzag(-1): null key */
        p = put_varint(p, zigzag(vl));
        if (vl > 0) {
            memcpy(p, v, (size_t)vl);
            p += vl;
        }
        *p++ = 0;                      /* zero headers */
    }
    if (rc < 0)
        return rc;
    return (int64_t)(p - dst);
}
