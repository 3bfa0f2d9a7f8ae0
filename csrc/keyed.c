/* keyed.c — see keyed.h. */
#include "keyed.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "partitioner.h"

/* Append records idx[0..count) of the columns to one partition, as few
 * frames as fit: halves the piece on -EMSGSIZE (a batch a racing thread
 * grew past the frame limit), never splits a single record. */
static int64_t append_group(shmlog_log_t *log, int slot, const uint32_t *idx, uint32_t count,
                            const uint8_t *const *vptr_all, const int32_t *vlens_all,
                            const uint64_t *koff_all, const uint8_t *keys,
                            const int32_t *klens_all, const uint8_t **vptrs, int32_t *vlens,
                            uint8_t *kbuf, int32_t *klens, int64_t timestamp,
                            uint64_t producer_id, uint32_t producer_seq, uint64_t timeout_ns,
                            uint64_t *end)
{
    uint32_t done = 0, piece = count;
    while (done < count) {
        if (piece > count - done)
            piece = count - done;
        size_t kb = 0;
        for (uint32_t i = 0; i < piece; i++) {
            uint32_t r = idx[done + i];
            vptrs[i] = vptr_all[r];
            vlens[i] = vlens_all[r];
            klens[i] = klens_all[r];
            memcpy(kbuf + kb, keys + koff_all[r], (size_t)klens_all[r]);
            kb += (size_t)klens_all[r];
        }
        shmlog_batch_in_t in;
        memset(&in, 0, sizeof in);
        in.count = piece;
        in.value_ptrs = vptrs;
        in.value_lens = vlens;
        in.keys = kbuf;
        in.key_lens = klens;
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
        done += piece;
        if (base + piece > *end)
            *end = base + piece;
    }
    return 0;
}

int64_t shmlog_keyed_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                            const char *values, const int32_t *value_lens,
                            const char *keys, const int32_t *key_lens, uint32_t n,
                            int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                            uint64_t timeout_ns, uint64_t *ends, uint32_t *failed)
{
    if (nparts == 0 || n == 0)
        return -EINVAL;
    /* one allocation per batch: partition of each record, group starts,
     * records grouped by partition, each record's value pointer and key
     * offset, and the gather buffers one partition's frame is built from */
    size_t key_bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (key_lens[i] < 0)
            return -EINVAL;
        key_bytes += (size_t)key_lens[i];
    }
    size_t need = (size_t)n * (sizeof(uint32_t) * 2 + sizeof(uint8_t *) * 2 + sizeof(uint64_t) +
                               sizeof(int32_t) * 2) +
                  (size_t)(nparts + 1) * sizeof(uint32_t) + key_bytes + 16;
    uint8_t *mem = malloc(need);
    if (!mem)
        return -ENOMEM;
    const uint8_t **vptr_all = (const uint8_t **)mem;
    const uint8_t **vptrs = vptr_all + n;
    uint64_t *koff = (uint64_t *)(vptrs + n);
    uint32_t *part = (uint32_t *)(koff + n);
    uint32_t *idx = part + n;
    uint32_t *start = idx + n;
    int32_t *vlens = (int32_t *)(start + nparts + 1);
    int32_t *klens = vlens + n;
    uint8_t *kbuf = (uint8_t *)(klens + n);

    memset(start, 0, (size_t)(nparts + 1) * sizeof(uint32_t));
    size_t vo = 0, ko = 0;
    for (uint32_t i = 0; i < n; i++) {
        vptr_all[i] = (const uint8_t *)values + vo;
        koff[i] = ko;
        uint32_t p = shmlog_key_partition(keys + ko, (size_t)key_lens[i], nparts);
        part[i] = p;
        start[p + 1]++;
        if (value_lens[i] > 0)
            vo += (size_t)value_lens[i];
        ko += (size_t)key_lens[i];
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
    uint32_t from = 0;
    for (uint32_t p = 0; p < nparts; p++) {
        uint32_t to = start[p];
        if (to == from)
            continue;
        int64_t r = append_group(logs[p], slots[p], idx + from, to - from, vptr_all, value_lens,
                                 koff, (const uint8_t *)keys, key_lens, vptrs, vlens, kbuf, klens, timestamp,
                                 producer_id, producer_seq, timeout_ns, &ends[p]);
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
