/* claim.c — the producer's side: claim, write, commit (DESIGN.md, "A
 * partition in shared memory").
 *
 *   claim   one fetch-add on the active chunk's packed tail gives a batch its
 *           frame's byte position and its base offset at once; right after
 *           it the producer stamps the frame word CLAIMED|bytes, so a hole
 *           left by a producer that dies has a known size;
 *   commit  payload, header, CRC, then a CAS of the frame word from CLAIMED
 *           to DATA: the release that readers acquire (next_frame, read.c).
 * Nothing here takes a lock: a process SIGKILLed at any instruction leaves
 * a claim the reaper can abort (repair.c, invariant 3).
 */
#include <errno.h>
#include <string.h>

#include "log_internal.h"

/* Claim fb bytes and `records` offsets. On success the slot describes the
 * claim and the frame word holds CLAIMED|fb. */
static int claim(shmlog_log_t *log, int slot, uint32_t fb, uint32_t records, uint64_t deadline,
                 uint64_t *seq_out, uint32_t *pos_out, uint64_t *base_out)
{
    shmlog_part_hdr_t *h = log->hdr;
    shmlog_producer_slot_t *ps = &h->producers[slot];
    const uint32_t cap = log->chunk_bytes;
    for (;;) {
        /* pairs with the rotator's CAS of active_seq (try_rotate, chunk.c),
         * made after it published the new chunk's seq, state and tail */
        uint64_t seq = shmlog_load_acquire_u64(&h->active_seq);
        shmlog_chunk_t *d = chunk_of(log, seq);
        uint64_t t = shmlog_load_relaxed_u64(&d->tail);
        int rc;
        if (SHMLOG_TAIL_BYTES(t) > cap) {
            /* known full: do not add, so the tail cannot wrap (DESIGN, Limits) */
            if ((rc = shmlog_chunk_wait_rotation(log, seq, deadline)) < 0)
                return rc;
            continue;
        }
        ps->claim_bytes = fb;
        ps->claim_records = records;
        shmlog_store_relaxed_u32(&ps->claim_stamped, 0);
        shmlog_store_relaxed_u32(&ps->fenced, 0);
        shmlog_store_relaxed_u64(&ps->claim_tail, SHMLOG_NONE);
        /* the claim is announced: this release pairs with the acquire-loads
         * of claim_seq that find claims (claimers_inside in chunk.c,
         * stale_word in read.c, the reaper in repair.c), which then see the
         * fields above reset for this claim */
        shmlog_store_release_u64(&ps->claim_seq, seq);
        shmlog_fence_seq_cst(); /* pairs with the fence in reclaim_oldest */
        uint64_t st = shmlog_load_acquire_u64(&d->state);
        if (shmlog_load_acquire_u64(&d->seq) != seq || STATE_OF(st) != SHMLOG_CHUNK_ACTIVE ||
            shmlog_load_acquire_u64(&d->seal) != SHMLOG_NONE) {
            clear_claim(ps);
            if ((rc = shmlog_chunk_wait_rotation(log, seq, deadline)) < 0)
                return rc;
            continue;
        }
        uint64_t prev = shmlog_fetch_add_u64(&d->tail, SHMLOG_TAIL_PACK(fb, records));
        /* pairs with the acquire-loads of claim_tail by readers (stale_word)
         * and the reaper (fence_claimers, unblock, reap_producer): from now
         * on the claim's position and size are known */
        shmlog_store_release_u64(&ps->claim_tail, prev);
        uint32_t pb = SHMLOG_TAIL_BYTES(prev);
        if ((uint64_t)pb + fb <= cap) {
            /* Aeron's "negative length": the hole has a known size from now on.
             * Whatever the word holds is an earlier generation's (even if it
             * looks like a frame of ours): only we and a reaper write here,
             * and a reaper raises `fenced` before it pads over us. */
            shmlog_frame_hdr_t *f = frame_at(log, seq, pb);
            uint64_t w = shmlog_load_acquire_u64(&f->frame);
            int stamped = 0;
            while (!shmlog_load_acquire_u32(&ps->fenced))
                if ((stamped = shmlog_cas_u64(&f->frame, &w, FRAME_WORD(seq, SHMLOG_FRAME_CLAIMED, fb))))
                    break;
            if (!stamped) {
                /* a reaper is padding over us (we stalled): give the claim up,
                 * padding it ourselves in case the reaper's pad loses to a
                 * late fence (either pad covers it; one CAS wins) */
                shmlog_frame_pad(log, seq, pb, w, fb);
                clear_claim(ps);
                continue;
            }
            /* after the CAS, a release that pairs with the acquire-loads of
             * claim_stamped in stale_word (read.c) and in unstamped_claim_at
             * and reap_producer (repair.c): who sees it sees our CLAIMED
             * word, so a pad found at pb is a reaper's, not stale bytes */
            shmlog_store_release_u32(&ps->claim_stamped, 1);
            *seq_out = seq;
            *pos_out = pb;
            *base_out = d->base_offset + SHMLOG_TAIL_RECORDS(prev);
            return 0;
        }
        if (pb <= cap) /* first overflower: it alone knows the exact final tail */
            shmlog_chunk_seal(log, seq, pb, SHMLOG_TAIL_RECORDS(prev));
        clear_claim(ps);
        if ((rc = shmlog_chunk_wait_rotation(log, seq, deadline)) < 0)
            return rc;
    }
}

/* 0 committed, -ECANCELED if the reaper aborted the claim meanwhile */
static int commit(shmlog_log_t *log, int slot, uint64_t seq, uint32_t pos, uint32_t fb,
                  uint32_t records)
{
    shmlog_producer_slot_t *ps = &log->hdr->producers[slot];
    shmlog_frame_hdr_t *f = frame_at(log, seq, pos);
    f->crc = frame_crc(f);
    /* payload, header, CRC are written; now the release: this CAS pairs with
     * the acquire-load of the frame word in next_frame() */
    uint64_t expected = FRAME_WORD(seq, SHMLOG_FRAME_CLAIMED, fb);
    int ok = shmlog_cas_u64(&f->frame, &expected, FRAME_WORD(seq, SHMLOG_FRAME_DATA, fb));
    clear_claim(ps);
    if (!ok)
        return -ECANCELED;
    ps->batches++;
    ps->records += records;
    wake_data(log);
    return 0;
}

static void fill_header(shmlog_frame_hdr_t *f, uint64_t base, uint32_t payload_bytes,
                        uint32_t count, uint32_t attributes, int64_t first, int64_t max,
                        uint64_t producer_id, uint32_t producer_seq, uint32_t uncompressed)
{
    f->payload_bytes = payload_bytes;
    f->base_offset = base;
    f->record_count = count;
    f->attributes = (uint16_t)attributes;
    f->batch_version = SHMLOG_BATCH_VERSION;
    f->first_timestamp = first;
    f->max_timestamp = max;
    f->producer_id = producer_id;
    f->producer_seq = producer_seq;
    f->uncompressed_bytes = uncompressed;
}

static int check_slot(shmlog_log_t *log, int slot)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_PRODUCERS)
        return -EINVAL;
    if (shmlog_load_relaxed_u32(&log->hdr->producers[slot].pid) != log->pid)
        return -EINVAL;
    return 0;
}

/* A frame's header fields, and how to write its payload (exactly
 * payload_bytes into dst: 0, or -EPROTO if the source disagrees). */
typedef struct {
    uint32_t payload_bytes, record_count, attributes, uncompressed_bytes;
    int64_t first_timestamp, max_timestamp;
    uint64_t producer_id;
    uint32_t producer_seq;
    int (*write)(const void *src, uint8_t *dst, uint32_t len);
    const void *src;
} frame_src_t;

/* Every append: claim, write the payload straight into the chunk, fill the
 * header, commit; claim again if a reaper aborted us meanwhile (we stalled
 * past claim_timeout: the aborted frame was never visible, so nothing is
 * duplicated). Returns the base offset, or `too_big` / -errno. */
static int64_t append_frame(shmlog_log_t *log, int slot, const frame_src_t *m,
                            uint64_t timeout_ns, int too_big)
{
    int rc = check_slot(log, slot);
    if (rc)
        return rc;
    uint64_t fb64 = align_frame((uint64_t)m->payload_bytes + SHMLOG_FRAME_HEADER);
    if (fb64 > log->max_batch_bytes)
        return too_big;
    uint32_t fb = (uint32_t)fb64;
    uint64_t deadline = shmlog_now_ns() + timeout_ns;
    for (;;) {
        uint64_t seq, base;
        uint32_t pos;
        if ((rc = claim(log, slot, fb, m->record_count, deadline, &seq, &pos, &base)) < 0)
            return rc;
        shmlog_frame_hdr_t *f = frame_at(log, seq, pos);
        uint8_t *payload = (uint8_t *)f + SHMLOG_FRAME_HEADER;
        if (m->write(m->src, payload, m->payload_bytes) < 0) {
            /* never commit a frame whose records disagree with its header */
            shmlog_frame_pad(log, seq, pos, FRAME_WORD(seq, SHMLOG_FRAME_CLAIMED, fb), fb);
            clear_claim(&log->hdr->producers[slot]);
            return -EPROTO;
        }
        /* the slack up to the 64-byte boundary still holds an earlier
         * generation's bytes; segment files get zeros, not those */
        memset(payload + m->payload_bytes, 0, fb - SHMLOG_FRAME_HEADER - m->payload_bytes);
        fill_header(f, base, m->payload_bytes, m->record_count, m->attributes,
                    m->first_timestamp, m->max_timestamp, m->producer_id, m->producer_seq,
                    m->uncompressed_bytes);
        if (commit(log, slot, seq, pos, fb, m->record_count) == 0)
            return (int64_t)base;
    }
}

static int write_batch(const void *src, uint8_t *dst, uint32_t len)
{
    /* sized (and validated) by shmlog_log_append a moment ago, from
     * columns nobody else writes: not sized again, bound-checked per record */
    return shmlog_codec_encode_sized((const shmlog_batch_in_t *)src, dst, len) == (int64_t)len ? 0
                                                                                               : -EPROTO;
}

int shmlog_log_append(shmlog_log_t *log, int slot, const shmlog_batch_in_t *in,
                      uint64_t timeout_ns, uint64_t *base_offset)
{
    int64_t section = shmlog_codec_encoded_size(in);
    if (section < 0)
        return (int)section;
    frame_src_t m = {.payload_bytes = (uint32_t)section, .record_count = in->count,
                     .attributes = in->attributes, .uncompressed_bytes = (uint32_t)section,
                     .producer_id = in->producer_id, .producer_seq = in->producer_seq,
                     .write = write_batch, .src = in};
    shmlog_codec_timestamps(in, &m.first_timestamp, &m.max_timestamp);
    int64_t base = append_frame(log, slot, &m, timeout_ns, -EMSGSIZE);
    if (base < 0)
        return (int)base;
    *base_offset = (uint64_t)base;
    return 0;
}

typedef struct {
    const uint8_t *stream;
    size_t len;
} pickled_src_t;

static int write_pickled(const void *src, uint8_t *dst, uint32_t len)
{
    const pickled_src_t *p = src;
    /* sized by the same stream a moment ago: a mismatch means someone
     * wrote to the caller's buffer meanwhile */
    return shmlog_codec_pickled_encode(p->stream, p->len, dst, len) == (int64_t)len ? 0 : -EPROTO;
}

int64_t shmlog_log_append_pickled(shmlog_log_t *log, int slot, const uint8_t *stream,
                                  size_t stream_len, int32_t max_value, int64_t timestamp,
                                  uint64_t producer_id, uint32_t producer_seq,
                                  uint64_t timeout_ns)
{
    uint32_t count;
    int64_t section = shmlog_codec_pickled_size(stream, stream_len, max_value, &count);
    if (section < 0)
        return section;
    pickled_src_t src = {stream, stream_len};
    frame_src_t m = {.payload_bytes = (uint32_t)section, .record_count = count,
                     .uncompressed_bytes = (uint32_t)section, .first_timestamp = timestamp,
                     .max_timestamp = timestamp, .producer_id = producer_id,
                     .producer_seq = producer_seq, .write = write_pickled, .src = &src};
    /* too big for a frame: the caller splits it (-EMSGSIZE names one value) */
    return append_frame(log, slot, &m, timeout_ns, -E2BIG);
}

int64_t shmlog_log_append_one(shmlog_log_t *log, int slot, const char *value,
                              int32_t value_len, int64_t timestamp, uint64_t producer_id,
                              uint32_t producer_seq, uint64_t timeout_ns)
{
    const uint8_t *ptr = (const uint8_t *)value;
    shmlog_batch_in_t in;
    memset(&in, 0, sizeof in);
    in.count = 1;
    in.value_ptrs = &ptr;
    in.value_lens = &value_len;
    in.timestamp = timestamp;
    in.producer_id = producer_id;
    in.producer_seq = producer_seq;
    uint64_t base;
    int rc = shmlog_log_append(log, slot, &in, timeout_ns, &base);
    return rc < 0 ? rc : (int64_t)base;
}

static int write_copy(const void *src, uint8_t *dst, uint32_t len)
{
    memcpy(dst, src, len);
    return 0;
}

int shmlog_log_append_section(shmlog_log_t *log, int slot, const uint8_t *payload,
                              uint32_t payload_bytes, uint32_t record_count,
                              uint32_t attributes, int64_t first_timestamp,
                              int64_t max_timestamp, uint64_t producer_id,
                              uint32_t producer_seq, uint32_t uncompressed_bytes,
                              uint64_t timeout_ns, uint64_t *base_offset)
{
    int rc = check_slot(log, slot);
    if (rc)
        return rc;
    if (!payload || record_count == 0)
        return -EINVAL;
    frame_src_t m = {.payload_bytes = payload_bytes, .record_count = record_count,
                     .attributes = attributes, .uncompressed_bytes = uncompressed_bytes,
                     .first_timestamp = first_timestamp, .max_timestamp = max_timestamp,
                     .producer_id = producer_id, .producer_seq = producer_seq,
                     .write = write_copy, .src = payload};
    int64_t base = append_frame(log, slot, &m, timeout_ns, -EMSGSIZE);
    if (base < 0)
        return (int)base;
    *base_offset = (uint64_t)base;
    return 0;
}

int shmlog_log_claim_only(shmlog_log_t *log, int slot, uint32_t payload_bytes,
                          uint32_t record_count, uint64_t *base_offset)
{
    int rc = check_slot(log, slot);
    if (rc)
        return rc;
    uint64_t fb64 = align_frame((uint64_t)payload_bytes + SHMLOG_FRAME_HEADER);
    if (fb64 > log->max_batch_bytes || record_count == 0)
        return -EMSGSIZE;
    uint64_t seq;
    uint32_t pos;
    return claim(log, slot, (uint32_t)fb64, record_count, shmlog_now_ns() + 1000000000ull, &seq,
                 &pos, base_offset);
}
