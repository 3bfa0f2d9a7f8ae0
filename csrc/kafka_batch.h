/* kafka_batch.h — Kafka record batches (magic 2) at the listener's boundary.
 *
 * shmlog's record section (codec.h) is Kafka's records v2 but for the
 * record length prefix, so a Produce checks the batch header and CRC,
 * rewrites the length prefixes of the (decompressed) records while it
 * validates them, and appends the section as one frame; a Fetch
 * encodes a read run (the columns shmlog_log_read fills) as one v2 batch.
 * Nothing here trusts a length it has not bounds-checked. Returns >= 0 or
 * -errno (-EBADMSG malformed, -EILSEQ bad CRC, -ENOSPC dst too small).
 */
#ifndef SHMLOG_KAFKA_BATCH_H
#define SHMLOG_KAFKA_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

#define SHMLOG_KAFKA_BATCH_HEADER 61 /* baseOffset .. recordsCount */

/* the header fields of one v2 batch, as shmlog_kafka_batch_parse found them */
typedef struct {
    int64_t base_offset;
    int32_t batch_length;       /* bytes after the length field */
    int32_t leader_epoch;
    uint32_t crc;
    int16_t attributes;         /* bits 0-2 codec, 3 log-append-time, 4 transactional, 5 control */
    int16_t producer_epoch;
    int32_t last_offset_delta;
    int64_t first_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int32_t base_sequence;
    int32_t record_count;
    uint32_t records_pos;       /* where the (maybe compressed) records start in buf */
    uint32_t records_len;
} shmlog_kafka_batch_t;

/* Parse and CRC-check the batch at buf (len bytes available). Returns the
 * batch's total size (12 + batchLength), -EBADMSG if it is not a whole
 * magic-2 batch, -EILSEQ if its CRC32C does not match. */
int64_t shmlog_kafka_batch_parse(const uint8_t *buf, size_t len, shmlog_kafka_batch_t *out);

/* Validate an uncompressed Kafka records section of `count` records and
 * write it into dst as a shmlog record section (codec.h). The two differ
 * only in the record length prefix (Kafka: zigzag varint; shmlog: unsigned
 * varint), so the output is never longer than the input. Offset deltas must
 * be 0..count-1 (what every producer writes, and what shmlog's dense frames
 * need). Sets the largest timestamp delta; returns bytes written, -EBADMSG
 * or -ENOSPC. */
int64_t shmlog_kafka_records_to_section(const uint8_t *p, size_t len, uint32_t count,
                                        uint8_t *dst, size_t cap, int64_t *max_ts_delta);

/* Upper bound of the bytes shmlog_kafka_encode needs for n records. */
uint64_t shmlog_kafka_encode_bound(const shmlog_records_out_t *out, uint32_t n);

/* How many of records [0, n) of out fit, encoded as one batch (header
 * included), in budget bytes: the exact size shmlog_kafka_encode would
 * write, so a Fetch answer can stop at a partition's limit without
 * overshooting it. 0 when not even the first record fits. */
uint32_t shmlog_kafka_encode_fit(const shmlog_records_out_t *out, uint32_t n, uint64_t budget);

/* Encode records [0, n) of out (positions relative to base) as one v2
 * batch, uncompressed, CreateTime, producer id -1, offset deltas relative
 * to out->offsets[0] (aborted holes stay holes). Returns bytes written or
 * -ENOSPC. */
int64_t shmlog_kafka_encode(const uint8_t *base, const shmlog_records_out_t *out, uint32_t n,
                            uint8_t *dst, size_t cap);

#endif
