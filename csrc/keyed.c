/* keyed.c — see keyed.h. */
#include "keyed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "partitioner.h"

/* The columns of one commit (pointers into the caller's buffers), and the
 * gather buffers one frame is built from (sized for the whole commit,
 * reused for every group). */
typedef struct {
    const uint8_t **vptr;  /* each record's value */
    int32_t *vlens;        /* -1: null */
    const uint8_t **kptr;  /* NULL: no record has a key */
    int32_t *klens;        /* -1: null */
    const uint8_t **hptr;  /* NULL: no record has headers */
    uint32_t *hlens;       /* encoded section, 0: none */
    int64_t *ts;           /* NULL: every record is stamped now; -1: now */
    const uint8_t **g_vptr;
    int32_t *g_vlens;
    const uint8_t **g_kptr; /* pointers, not copies: the encoder reads each record's own bytes */
    int32_t *g_klens;
    const uint8_t **g_hptr;
    uint32_t *g_hlens;
    int64_t *g_ts;
} columns_t;

/* Append records idx[0..count) of the columns to one partition, as few
 * frames as fit: halves the piece on -EMSGSIZE (a batch a racing thread
 * grew past the frame limit), never splits a single record. */
static int64_t append_group(shmlog_log_t *log, int slot, const uint32_t *idx, uint32_t count,
                            const columns_t *c, int64_t timestamp, uint64_t producer_id,
                            uint32_t producer_seq, uint64_t timeout_ns, uint64_t *end,
                            uint64_t *offsets)
{
    uint32_t done = 0, piece = count;
    while (done < count) {
        if (piece > count - done)
            piece = count - done;
        for (uint32_t i = 0; i < piece; i++) {
            uint32_t r = idx[done + i];
            c->g_vptr[i] = c->vptr[r];
            c->g_vlens[i] = c->vlens[r];
            if (c->kptr) {
                c->g_kptr[i] = c->kptr[r];
                c->g_klens[i] = c->klens[r];
            }
            if (c->hptr) {
                c->g_hptr[i] = c->hptr[r];
                c->g_hlens[i] = c->hlens[r];
            }
            if (c->ts)
                c->g_ts[i] = c->ts[r] < 0 ? timestamp : c->ts[r];
        }
        shmlog_batch_in_t in;
        memset(&in, 0, sizeof in);
        in.count = piece;
        in.value_ptrs = c->g_vptr;
        in.value_lens = c->g_vlens;
        if (c->kptr) {
            in.key_ptrs = c->g_kptr;
            in.key_lens = c->g_klens;
        }
        if (c->hptr) {
            in.header_ptrs = c->g_hptr;
            in.header_lens = c->g_hlens;
        }
        if (c->ts)
            in.timestamps = c->g_ts;
        in.timestamp = timestamp;
        in.producer_id = producer_id;
        in.producer_seq = producer_seq;
        uint64_t base;
        int rc = shmlog_log_append(log, slot, &in, timeout_ns, &base);
        if (rc == -EMSGSIZE && piece > 1) {
            piece /= 2;
            continue;
        }
        if (rc < 0)
            return rc;
        if (offsets)
            for (uint32_t i = 0; i < piece; i++)
                offsets[idx[done + i]] = base + i;
        done += piece;
        if (base + piece > *end)
            *end = base + piece;
    }
    return 0;
}

/* Place records (parts[i] >= 0, or the key's partition), group them by
 * partition stably and append each group; c's column pointers are set,
 * its gather buffers are allocated here. */
static int64_t place_and_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                                const int32_t *parts, columns_t *c, uint32_t n, int64_t timestamp,
                                uint64_t producer_id, uint32_t producer_seq, uint64_t timeout_ns,
                                uint64_t *ends, uint32_t *failed, int32_t *out_parts,
                                uint64_t *offsets)
{
    if (n == 0) /* (the callers refuse it; the span below needs a record) */
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        int32_t p = parts ? parts[i] : -1;
        if (p >= (int32_t)nparts || (p < 0 && (!c->kptr || c->klens[i] < 0)))
            return -EINVAL; /* hashed records need a key */
    }
    /* one allocation per commit: partition of each record, group starts,
     * records grouped by partition, and the gather columns (pointers into
     * the records' own bytes) */
    size_t need = (size_t)n * (sizeof(uint8_t *) * 3 + sizeof(int64_t) + sizeof(uint32_t) * 3 +
                               sizeof(int32_t) * 2) +
                  (size_t)(nparts + 1) * sizeof(uint32_t);
    uint8_t *mem = malloc(need);
    if (!mem)
        return -ENOMEM;
    c->g_vptr = (const uint8_t **)mem;
    c->g_kptr = c->g_vptr + n;
    c->g_hptr = c->g_kptr + n;
    c->g_ts = (int64_t *)(c->g_hptr + n);
    uint32_t *part = (uint32_t *)(c->g_ts + n);
    uint32_t *idx = part + n;
    c->g_hlens = idx + n;
    uint32_t *start = c->g_hlens + n;
    c->g_vlens = (int32_t *)(start + nparts + 1);
    c->g_klens = c->g_vlens + n;

    /* partitions first, and the span [lo, hi] they fall in: the counting
     * sort below walks that span, not every partition (a commit of ~20
     * records to one of 256 partitions would otherwise spend more on
     * clearing and scanning the 256 counts than on its records) */
    uint32_t lo = nparts, hi = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = parts && parts[i] >= 0
                         ? (uint32_t)parts[i]
                         : shmlog_key_partition((const char *)c->kptr[i], (size_t)c->klens[i], nparts);
        part[i] = p;
        if (out_parts)
            out_parts[i] = (int32_t)p;
        if (p < lo)
            lo = p;
        if (p > hi)
            hi = p;
    }
    /* start[] indexed by partition - lo */
    uint32_t span = hi - lo + 1;
    memset(start, 0, (size_t)(span + 1) * sizeof(uint32_t));
    for (uint32_t i = 0; i < n; i++)
        start[part[i] - lo + 1]++;
    int64_t rc = n;
    for (uint32_t g = 0; g < span; g++) {
        if (start[g + 1] && slots[lo + g] < 0) {
            *failed = lo + g;
            rc = -ENOENT;
            goto out;
        }
        start[g + 1] += start[g];
    }
    /* counting sort, stable: a partition's records keep their arrival order.
     * start[g] walks up to the next partition's start while filling, so
     * afterwards partition lo+g's group is idx[start[g-1] .. start[g]) */
    for (uint32_t i = 0; i < n; i++)
        idx[start[part[i] - lo]++] = i;
    uint32_t from = 0;
    for (uint32_t g = 0; g < span; g++) {
        uint32_t to = start[g];
        if (to == from)
            continue;
        uint32_t p = lo + g;
        int64_t r = append_group(logs[p], slots[p], idx + from, to - from, c, timestamp,
                                 producer_id, producer_seq, timeout_ns, &ends[p], offsets);
        if (r < 0) {
            *failed = p;
            rc = r;
            goto out;
        }
        from = to;
    }
out:
    free(mem);
    return rc;
}

int64_t shmlog_keyed_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                            const char *values, const int32_t *value_lens,
                            const char *keys, const int32_t *key_lens, uint32_t n,
                            int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                            uint64_t timeout_ns, uint64_t *ends, uint32_t *failed)
{
    if (nparts == 0 || n == 0 || !keys)
        return -EINVAL;
    const uint8_t **ptrs = malloc((size_t)n * 2 * sizeof *ptrs);
    if (!ptrs)
        return -ENOMEM;
    columns_t c;
    memset(&c, 0, sizeof c);
    c.vptr = ptrs;
    c.kptr = ptrs + n;
    c.vlens = (int32_t *)value_lens;
    c.klens = (int32_t *)key_lens;
    int64_t rc = 0;
    size_t vo = 0, ko = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (key_lens[i] < 0) {
            rc = -EINVAL;
            goto out;
        }
        c.vptr[i] = (const uint8_t *)values + vo;
        c.kptr[i] = (const uint8_t *)keys + ko;
        if (value_lens[i] > 0)
            vo += (size_t)value_lens[i];
        ko += (size_t)key_lens[i];
    }
    rc = place_and_append(logs, slots, nparts, NULL, &c, n, timestamp, producer_id, producer_seq,
                          timeout_ns, ends, failed, NULL, NULL);
out:
    free(ptrs);
    return rc;
}

int64_t shmlog_rich_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                           const shmlog_rich_record_t *recs, uint32_t n, uint32_t flags,
                           int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                           uint64_t timeout_ns, uint64_t *ends, uint32_t *failed,
                           int32_t *out_parts, uint64_t *offsets)
{
    if (nparts == 0 || n == 0 || !recs)
        return -EINVAL;
    size_t need = (size_t)n * (sizeof(uint8_t *) * 3 + sizeof(int64_t) + sizeof(int32_t) * 4);
    uint8_t *mem = malloc(need);
    if (!mem)
        return -ENOMEM;
    columns_t c;
    memset(&c, 0, sizeof c);
    c.vptr = (const uint8_t **)mem;
    c.kptr = c.vptr + n;
    c.hptr = c.kptr + n;
    c.ts = (int64_t *)(c.hptr + n);
    c.vlens = (int32_t *)(c.ts + n);
    c.klens = c.vlens + n;
    c.hlens = (uint32_t *)(c.klens + n);
    int32_t *parts = (int32_t *)(c.hlens + n);
    int64_t rc = 0;
    /* the records' fields come from Python objects: checked here, not
     * trusted, before anything is appended */
    for (uint32_t i = 0; i < n; i++) {
        const shmlog_rich_record_t *r = &recs[i];
        if (r->partition < -1 || r->value_len < -1 || r->key_len < -1 || r->timestamp < -1 ||
            (r->value_len > 0 && !r->value) || (r->key_len > 0 && !r->key) ||
            (r->header_len && !r->headers)) {
            rc = -EINVAL;
            goto out;
        }
        c.vptr[i] = r->value;
        c.vlens[i] = r->value_len;
        c.kptr[i] = r->key;
        c.klens[i] = r->key_len;
        c.hptr[i] = r->headers;
        c.hlens[i] = r->header_len;
        c.ts[i] = r->timestamp;
        parts[i] = r->partition;
    }
    /* columns every record leaves empty are not passed at all */
    if (!(flags & SHMLOG_RICH_KEYS))
        c.kptr = NULL;
    if (!(flags & SHMLOG_RICH_HEADERS))
        c.hptr = NULL;
    if (!(flags & SHMLOG_RICH_TIMESTAMPS))
        c.ts = NULL;
    rc = place_and_append(logs, slots, nparts, parts, &c, n, timestamp, producer_id, producer_seq,
                          timeout_ns, ends, failed, out_parts, offsets);
out:
    free(mem);
    return rc;
}

int64_t shmlog_keyed_append_one(shmlog_log_t *log, int slot, const char *key, int32_t key_len,
                                const char *value, int32_t value_len, int64_t timestamp,
                                uint64_t producer_id, uint32_t producer_seq, uint64_t timeout_ns)
{
    const uint8_t *ptr = (const uint8_t *)value;
    shmlog_batch_in_t in;
    memset(&in, 0, sizeof in);
    in.count = 1;
    in.value_ptrs = &ptr;
    in.value_lens = &value_len;
    in.keys = (const uint8_t *)key;
    in.key_lens = &key_len;
    in.timestamp = timestamp;
    in.producer_id = producer_id;
    in.producer_seq = producer_seq;
    uint64_t base;
    int rc = shmlog_log_append(log, slot, &in, timeout_ns, &base);
    return rc < 0 ? rc : (int64_t)base;
}
