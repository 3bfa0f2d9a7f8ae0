/* keyed.h — keyed records to their partitions (Kafka's murmur2 placement)
 * in one crossing per batch, however many partitions they touch.
 *
 * A producer queues a topic's keyed sends in arrival order and hands them
 * over as columns; here each key is hashed, the records are grouped by
 * partition (stably: arrival order within each partition is kept) and each
 * partition's group is appended as one frame. Nothing per record crosses
 * into Python, and nothing is allocated per record. */
#ifndef SHMLOG_KEYED_H
#define SHMLOG_KEYED_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "rich_record.h"

/* Append n keyed records (values and keys concatenated, with lengths; a
 * value length of -1 is a null value, keys are never null) to
 * logs[partition_of(key)], one frame per partition touched, in partition
 * order. slots[p] is this producer's slot in logs[p]; ends[p] is raised to
 * the end offset of what was committed there.
 *
 * Returns n, or:
 *   -ENOENT with *failed = p: slots[p] < 0 (register it and call again;
 *           nothing was appended),
 *   -errno  with *failed = p: partition p's append failed (-EAGAIN after
 *           timeout_ns: buffer full); partitions below p are committed,
 *           p and those above are not. */
int64_t shmlog_keyed_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                            const char *values, const int32_t *value_lens,
                            const char *keys, const int32_t *key_lens, uint32_t n,
                            int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                            uint64_t timeout_ns, uint64_t *ends, uint32_t *failed);

/* The rich queue's commit (shmlog/client/rich_queue.py): n records, each
 * with its partition (-1: the key's; such a record needs a key), key and
 * value (len -1: null), encoded header section and timestamp (-1: stamped
 * with timestamp). flags (SHMLOG_RICH_*) say which columns any record
 * uses; a column no record uses may be left out of the frames. Every
 * field is range-checked before anything is appended (-EINVAL). out_parts[i]
 * (if not NULL) gets record i's partition, offsets[i] (if not NULL) its
 * offset once committed (entries of records not committed are left as
 * they were). Returns and fails as shmlog_keyed_append. */
int64_t shmlog_rich_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                           const shmlog_rich_record_t *recs, uint32_t n, uint32_t flags,
                           int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                           uint64_t timeout_ns, uint64_t *ends, uint32_t *failed,
                           int32_t *out_parts, uint64_t *offsets);

/* One keyed record to one partition (the caller hashed the key with
 * shmlog_key_partition): the latency path of a lone keyed send().
 * Returns its offset or -errno. */
int64_t shmlog_keyed_append_one(shmlog_log_t *log, int slot, const char *key, int32_t key_len,
                                const char *value, int32_t value_len, int64_t timestamp,
                                uint64_t producer_id, uint32_t producer_seq, uint64_t timeout_ns);

#endif
