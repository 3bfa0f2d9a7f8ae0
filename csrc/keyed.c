/* keyed.c — see keyed.h. */
#include "keyed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "partitioner.h"

/* The columns of one commit, and the gather buffers one frame is built
 * from (sized for the whole commit, reused for every group). */
typedef struct {
    const uint8_t *const *vptr;  /* each record's value */
    const int32_t *vlens;
    const uint8_t *keys;         /* NULL: no record has a key */
    const uint64_t *koff;
    const int32_t *klens;
    const uint8_t *headers;      /* NULL: no record has headers */
    const uint64_t *hoff;
    const uint32_t *hlens;
    const int64_t *timestamps;   /* NULL: every record is stamped now; -1: now */
    const uint8_t **g_vptr;
    int32_t *g_vlens;
    uint8_t *g_keys;
    int32_t *g_klens;
    uint8_t *g_headers;
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
        size_t kb = 0, hb = 0;
        for (uint32_t i = 0; i < piece; i++) {
            uint32_t r = idx[done + i];
            c->g_vptr[i] = c->vptr[r];
            c->g_vlens[i] = c->vlens[r];
            if (c->keys) {
                int32_t kl = c->klens[r];
                c->g_klens[i] = kl;
                if (kl > 0) {
                    memcpy(c->g_keys + kb, c->keys + c->koff[r], (size_t)kl);
                    kb += (size_t)kl;
                }
            }
            if (c->headers) {
                uint32_t hl = c->hlens[r];
                c->g_hlens[i] = hl;
                memcpy(c->g_headers + hb, c->headers + c->hoff[r], hl);
                hb += hl;
            }
            if (c->timestamps)
                c->g_ts[i] = c->timestamps[r] < 0 ? timestamp : c->timestamps[r];
        }
        shmlog_batch_in_t in;
        memset(&in, 0, sizeof in);
        in.count = piece;
        in.value_ptrs = c->g_vptr;
        in.value_lens = c->g_vlens;
        if (c->keys) {
            in.keys = c->g_keys;
            in.key_lens = c->g_klens;
        }
        if (c->headers) {
            in.headers = c->g_headers;
            in.header_lens = c->g_hlens;
        }
        if (c->timestamps)
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

int64_t shmlog_rich_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                           const int32_t *parts, const char *values, const int32_t *value_lens,
                           const char *keys, const int32_t *key_lens,
                           const char *headers, const uint32_t *header_lens,
                           const int64_t *timestamps, uint32_t n, int64_t timestamp,
                           uint64_t producer_id, uint32_t producer_seq, uint64_t timeout_ns,
                           uint64_t *ends, uint32_t *failed, int32_t *out_parts,
                           uint64_t *offsets)
{
    if (nparts == 0 || n == 0)
        return -EINVAL;
    /* one allocation per commit: partition of each record, group starts,
     * records grouped by partition, each record's value pointer and key and
     * header offsets, and the gather buffers one partition's frame is built
     * from */
    size_t key_bytes = 0, header_bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        int32_t p = parts ? parts[i] : -1;
        if (p >= (int32_t)nparts || (p < 0 && (!keys || key_lens[i] < 0)))
            return -EINVAL;  /* hashed records need a key */
        if (keys && key_lens[i] > 0)
            key_bytes += (size_t)key_lens[i];
        if (headers)
            header_bytes += header_lens[i];
    }
    size_t need = (size_t)n * (sizeof(uint32_t) * 4 + sizeof(uint8_t *) * 2 + sizeof(uint64_t) * 2 +
                               sizeof(int32_t) * 2 + sizeof(int64_t)) +
                  (size_t)(nparts + 1) * sizeof(uint32_t) + key_bytes + header_bytes + 16;
    uint8_t *mem = malloc(need);
    if (!mem)
        return -ENOMEM;
    const uint8_t **vptr_all = (const uint8_t **)mem;
    const uint8_t **g_vptr = vptr_all + n;
    uint64_t *koff = (uint64_t *)(g_vptr + n);
    uint64_t *hoff = koff + n;
    int64_t *g_ts = (int64_t *)(hoff + n);
    uint32_t *part = (uint32_t *)(g_ts + n);
    uint32_t *idx = part + n;
    uint32_t *g_hlens = idx + n;
    uint32_t *start = g_hlens + n;
    int32_t *g_vlens = (int32_t *)(start + nparts + 1);
    int32_t *g_klens = g_vlens + n;
    uint8_t *g_keys = (uint8_t *)(g_klens + n);
    uint8_t *g_headers = g_keys + key_bytes;

    memset(start, 0, (size_t)(nparts + 1) * sizeof(uint32_t));
    size_t vo = 0, ko = 0, ho = 0;
    for (uint32_t i = 0; i < n; i++) {
        vptr_all[i] = (const uint8_t *)values + vo;
        if (value_lens[i] > 0)
            vo += (size_t)value_lens[i];
        uint32_t p;
        if (keys) {
            koff[i] = ko;
            int32_t kl = key_lens[i];
            p = parts && parts[i] >= 0 ? (uint32_t)parts[i]
                                       : shmlog_key_partition(keys + ko, (size_t)kl, nparts);
            if (kl > 0)
                ko += (size_t)kl;
        } else {
            p = (uint32_t)parts[i];
        }
        if (headers) {
            hoff[i] = ho;
            ho += header_lens[i];
        }
        part[i] = p;
        if (out_parts)
            out_parts[i] = (int32_t)p;
        start[p + 1]++;
    }
    int64_t rc = n;
    for (uint32_t p = 0; p < nparts; p++) {
        if (start[p + 1] && slots[p] < 0) {
            *failed = p;
            rc = -ENOENT;
            goto out;
        }
        start[p + 1] += start[p];
    }
    /* counting sort, stable: a partition's records keep their arrival order.
     * start[p] walks up to the next partition's start while filling, so
     * afterwards partition p's group is idx[start[p-1] .. start[p]) */
    for (uint32_t i = 0; i < n; i++)
        idx[start[part[i]]++] = i;
    columns_t c = {vptr_all, value_lens, (const uint8_t *)keys, koff, key_lens,
                   (const uint8_t *)headers, hoff, header_lens, timestamps,
                   g_vptr, g_vlens, g_keys, g_klens, g_headers, g_hlens, g_ts};
    uint32_t from = 0;
    for (uint32_t p = 0; p < nparts; p++) {
        uint32_t to = start[p];
        if (to == from)
            continue;
        int64_t r = append_group(logs[p], slots[p], idx + from, to - from, &c, timestamp,
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
    if (!keys)
        return -EINVAL;
    return shmlog_rich_append(logs, slots, nparts, NULL, values, value_lens, keys, key_lens,
                              NULL, NULL, NULL, n, timestamp, producer_id, producer_seq,
                              timeout_ns, ends, failed, NULL, NULL);
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
