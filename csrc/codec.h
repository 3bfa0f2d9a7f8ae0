/* codec.h — the record section of a batch: Kafka's record v2 in spirit.
 *
 * Per record: varint length of what follows, attributes byte, zigzag varint
 * timestamp delta and offset delta, key (zigzag varint length, -1 = null),
 * value (same), then the header section (zigzag varint count, each header a
 * key and a nullable value). The encoder writes straight into a claimed
 * chunk; the decoder never trusts a length it has not bounds-checked.
 * Functions are shmlog_codec_*; they return >= 0 (a size, a count) or -errno.
 */
#ifndef SHMLOG_CODEC_H
#define SHMLOG_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* One batch as Python hands it over: columns, not objects, so a batch of a
 * thousand records crosses into C once. */
typedef struct {
    uint32_t count;
    const uint8_t *values;          /* all values concatenated, or NULL with value_ptrs */
    const uint8_t *const *value_ptrs; /* or one pointer per value (large values: no join copy) */
    const int32_t *value_lens;      /* -1 = null value */
    const uint8_t *keys;            /* all keys concatenated, or NULL = every key null */
    const int32_t *key_lens;
    const uint8_t *headers;         /* pre-encoded header sections, or NULL = none */
    const uint32_t *header_lens;
    const int64_t *timestamps;      /* per record, or NULL = all `timestamp` */
    int64_t timestamp;
    uint64_t producer_id;
    uint32_t producer_seq;
    uint32_t attributes;
    /* or one pointer per key / header section, in place of keys / headers
     * (a commit that groups records by partition points at each record's
     * own bytes instead of gathering copies of them); key_lens and
     * header_lens as above */
    const uint8_t *const *key_ptrs;
    const uint8_t *const *header_ptrs;
} shmlog_batch_in_t;

/* Where decoded records land: parallel arrays of `capacity` entries.
 * Positions are byte positions relative to the `pos_base` the caller gives
 * (the region, or a decompressed buffer), so Python can slice directly. */
typedef struct {
    uint32_t capacity;
    uint64_t *offsets;
    int64_t *timestamps;
    uint64_t *value_pos;
    int32_t *value_lens;
    uint64_t *key_pos;
    int32_t *key_lens;
    uint64_t *header_pos;           /* header section, count included */
    uint32_t *header_lens;          /* 0 = no headers */
    uint32_t flags;                 /* OR of SHMLOG_REC_* over what was written,
                                     * so Python skips columns that are all empty */
} shmlog_records_out_t;

#define SHMLOG_REC_KEYS      1u     /* some record has a non-null key */
#define SHMLOG_REC_HEADERS   2u     /* some record has headers */
#define SHMLOG_REC_NULLS     4u     /* some record has a null value */

/* bytes the record section of this batch needs, or -EINVAL / -EMSGSIZE */
int64_t shmlog_codec_encoded_size(const shmlog_batch_in_t *in);
/* encode the record section into dst (cap bytes); returns bytes written or -errno */
int64_t shmlog_codec_encode(const shmlog_batch_in_t *in, uint8_t *dst, size_t cap);
/* the same for a batch shmlog_codec_encoded_size has just sized (and
 * validated) at len bytes: not sized again (the append path's second pass
 * over every record); a record that would not fit in len gives -ENOSPC */
int64_t shmlog_codec_encode_sized(const shmlog_batch_in_t *in, uint8_t *dst, size_t len);
/* the first and max timestamps of the batch */
void shmlog_codec_timestamps(const shmlog_batch_in_t *in, int64_t *first, int64_t *max);

/* Decode `record_count` records of a section at `payload` (len bytes).
 * Records with offset < skip_below are skipped. Writes from out[index] and
 * stops when out is full (the caller resumes by offset); returns the number
 * written or -EBADMSG (anything out of bounds or inconsistent). Records past
 * a full `out` are not validated by this call. */
int64_t shmlog_codec_decode(const uint8_t *payload, size_t len, uint32_t record_count,
                            uint64_t base_offset, int64_t first_timestamp,
                            uint64_t pos_base, uint64_t skip_below,
                            shmlog_records_out_t *out, uint32_t index);

/* Unkeyed values given as the pickle of a list of bytes/None (protocol 3,
 * no memo): the record section's size and record count (values above
 * max_value: -EMSGSIZE; a stream of any other shape: -EPROTO), and the
 * encoder, which writes what shmlog_codec_encode would for those values. */
int64_t shmlog_codec_pickled_size(const uint8_t *s, size_t len, int32_t max_value,
                                  uint32_t *count);
int64_t shmlog_codec_pickled_encode(const uint8_t *s, size_t len, uint8_t *dst, size_t cap);
/* The result of a read as a pickle stream (see shmlog_log_read_pickled):
 * returns its length, or -ENOSPC if cap is too small. */
int64_t shmlog_codec_result_pickle(const uint8_t *base, const shmlog_records_out_t *out, uint32_t n,
                                   uint64_t first_seq, uint64_t bytes, uint8_t *dst, size_t cap);
/* Copy n values (region positions and lengths, -1 = null) into dst as a
 * pickled list of bytes (see codec.c); returns bytes written or -ENOSPC. */
int64_t shmlog_codec_values_pickle(const uint8_t *base, const uint64_t *pos, const int32_t *lens,
                                   uint32_t n, uint8_t *dst, size_t cap);

#endif
