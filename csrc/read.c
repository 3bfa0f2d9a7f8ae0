/* read.c — the consumer's side: walk committed frames from a cursor,
 * decode their batches, validate after copying, seek, wait for data, and
 * say what a reader at the cursor is waiting for (the frontier).
 *
 * Nothing read from the region is trusted: every length is checked against
 * the chunk and every batch's CRC before its records are handed out, and a
 * copy is only kept if the chunk it came from was not reused meanwhile
 * (shmlog_log_validate, a seqlock-style check on the chunk state).
 */
#include <errno.h>
#include <string.h>

#include "log_internal.h"

#define NF_FRAME    1   /* a DATA frame is at the cursor */
#define NF_NOTYET   0   /* nothing committed at the cursor yet */

/* Is the word w read at (seq, pos) perhaps bytes an earlier generation left
 * there, carrying this generation's tag by chance? Where nobody has claimed
 * yet, it is; inside a claim whose producer has not stamped its CLAIMED word
 * yet, it may be. Either way it means "not yet": not a pad to skip, not
 * corruption. A slow path, for pads and bad frames only: a good DATA frame
 * (tag, header fields, CRC) is never stale bytes by chance, and skipping
 * this keeps the tail's cache line away from readers. */
static int stale_word(shmlog_log_t *log, uint64_t seq, uint32_t pos,
                      const volatile uint64_t *word, uint64_t w)
{
    shmlog_chunk_t *d = chunk_of(log, seq);
    if (shmlog_load_acquire_u64(&d->seal) == SHMLOG_NONE &&
        pos >= SHMLOG_TAIL_BYTES(shmlog_load_acquire_u64(&d->tail)))
        return 1;
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        shmlog_producer_slot_t *s = &log->hdr->producers[i];
        if (shmlog_load_acquire_u64(&s->claim_seq) != seq)
            continue;
        uint64_t ct = shmlog_load_acquire_u64(&s->claim_tail);
        if (shmlog_load_acquire_u32(&s->fenced))
            continue; /* a reaper took the claim over: its pad stands */
        if (ct == SHMLOG_NONE ||
            (SHMLOG_TAIL_BYTES(ct) == pos && !shmlog_load_acquire_u32(&s->claim_stamped)))
            return 1;
    }
    /* a stamp we saw above makes its CAS visible: a changed word says so */
    return shmlog_load_acquire_u64(word) != w;
}

/* The header fields a DATA frame of chunk d must have, before its CRC. The
 * frame word is outside the CRC: producers always write exactly
 * align64(header + payload), so anything else is corruption. */
static int header_ok(const shmlog_log_t *log, const shmlog_chunk_t *d,
                     const shmlog_frame_hdr_t *f, uint32_t fl)
{
    return align_frame((uint64_t)f->payload_bytes + SHMLOG_FRAME_HEADER) == fl &&
           f->record_count != 0 && f->base_offset >= d->base_offset &&
           f->base_offset - d->base_offset + f->record_count <= (uint64_t)log->chunk_bytes;
}

/* Move the cursor over pads and finished chunks to the next DATA frame.
 * Never trusts a length it has not checked against the chunk. */
static int next_frame(shmlog_log_t *log, shmlog_cursor_t *c, shmlog_frame_hdr_t **out,
                      uint32_t *flen_out)
{
    const uint32_t cap = log->chunk_bytes;
    for (;;) {
        shmlog_chunk_t *d = chunk_of(log, c->seq);
        uint64_t st = shmlog_load_acquire_u64(&d->state);
        uint32_t s = STATE_OF(st);
        if (shmlog_load_acquire_u64(&d->seq) != c->seq ||
            (s != SHMLOG_CHUNK_ACTIVE && s != SHMLOG_CHUNK_SEALED)) {
            /* Our chunk was reused. That lost nothing if we had consumed all
             * of it: the next chunk starts at or below our next offset. */
            shmlog_chunk_t *n = chunk_of(log, c->seq + 1);
            uint32_t ns = STATE_OF(shmlog_load_acquire_u64(&n->state));
            if (shmlog_load_acquire_u64(&n->seq) == c->seq + 1 &&
                (ns == SHMLOG_CHUNK_ACTIVE || ns == SHMLOG_CHUNK_SEALED) &&
                c->next_offset >= n->base_offset &&
                shmlog_log_validate(log, c->seq + 1) == 0) {
                c->seq++;
                c->pos = 0;
                continue;
            }
            return -ERANGE;
        }
        uint64_t seal = shmlog_load_acquire_u64(&d->seal);
        uint32_t limit = seal != SHMLOG_NONE ? SHMLOG_TAIL_BYTES(seal) : cap;
        if (limit > cap)
            return -EBADMSG;
        if (c->pos % SHMLOG_FRAME_ALIGN)
            return -EBADMSG;
        if (c->pos + SHMLOG_FRAME_HEADER <= limit) {
            shmlog_frame_hdr_t *f = frame_at(log, c->seq, c->pos);
            /* pairs with the committer's CAS to DATA (commit() in claim.c)
             * and the reaper's to PAD (shmlog_frame_pad): a DATA word seen
             * here means the header, payload and CRC behind it are written */
            uint64_t w = shmlog_load_acquire_u64(&f->frame);
            uint32_t type = frame_kind(w, c->seq), fl = FRAME_LEN(w);
            if (type == SHMLOG_FRAME_DATA || type == SHMLOG_FRAME_PAD) {
                int bad = fl < SHMLOG_FRAME_HEADER || fl > limit - c->pos ||
                          (type == SHMLOG_FRAME_DATA && !header_ok(log, d, f, fl));
                if (bad || type == SHMLOG_FRAME_PAD) {
                    if (stale_word(log, c->seq, c->pos, &f->frame, w))
                        return NF_NOTYET;
                    if (bad)
                        return -EBADMSG;
                    c->pos += fl;
                    continue;
                }
                *out = f;
                *flen_out = fl;
                return NF_FRAME;
            }
            /* NONE (zero, or another generation's bytes) and CLAIMED */
            if (seal == SHMLOG_NONE || c->pos < limit)
                return NF_NOTYET;
        } else if (seal == SHMLOG_NONE) {
            return NF_NOTYET;
        }
        /* past the sealed end: the next chunk, once it has been opened */
        shmlog_chunk_t *n = chunk_of(log, c->seq + 1);
        if (shmlog_load_acquire_u64(&log->hdr->active_seq) <= c->seq ||
            shmlog_load_acquire_u64(&n->seq) != c->seq + 1)
            return NF_NOTYET;
        uint64_t nst = STATE_OF(shmlog_load_acquire_u64(&n->state));
        if (nst != SHMLOG_CHUNK_ACTIVE && nst != SHMLOG_CHUNK_SEALED)
            return -ERANGE;
        c->seq++;
        c->pos = 0;
        if (c->next_offset < n->base_offset)
            c->next_offset = n->base_offset;
    }
}

/* the last check of a DATA frame (next_frame checked its header) */
static inline int crc_ok(const shmlog_frame_hdr_t *f)
{
    return frame_crc(f) == f->crc;
}

int shmlog_log_read(shmlog_log_t *log, shmlog_cursor_t *c, shmlog_records_out_t *out,
                    uint64_t max_bytes, shmlog_read_info_t *info)
{
    memset(info, 0, sizeof(*info));
    info->first_seq = c->seq;
    info->start = *c;
    out->flags = 0;
    uint32_t n = 0;
    int first = 1;
    while (n < out->capacity && info->bytes < max_bytes) {
        shmlog_frame_hdr_t *f;
        uint32_t fl;
        int rc = next_frame(log, c, &f, &fl);
        if (rc == NF_NOTYET)
            break;
        if (rc < 0) {
            info->bad_offset = c->next_offset;
            return n ? (int)n : rc;
        }
        if (first) {
            /* validate the chunk we actually copy from, not the one we left */
            info->first_seq = c->seq;
            first = 0;
        }
        if (!crc_ok(f)) {
            if (stale_word(log, c->seq, c->pos, &f->frame,
                                FRAME_WORD(c->seq, SHMLOG_FRAME_DATA, fl)))
                break;
            /* the header is not trusted: name the offset we were reading */
            info->bad_offset = c->next_offset;
            return n ? (int)n : -EBADMSG;
        }
        uint64_t end = f->base_offset + f->record_count;
        if (end <= c->next_offset) { /* entirely before the cursor (after a seek) */
            c->pos += fl;
            continue;
        }
        if ((f->attributes & SHMLOG_ATTR_COMPRESSION_MASK) != 0) {
            if (n)
                break; /* hand back what we have; the compressed frame comes next call */
            info->frame_pos = region_pos(log, c->seq, c->pos);
            info->frame_base_offset = f->base_offset;
            info->frame_first_timestamp = f->first_timestamp;
            info->frame_payload_bytes = f->payload_bytes;
            info->frame_record_count = f->record_count;
            info->frame_attributes = f->attributes;
            info->frame_uncompressed_bytes = f->uncompressed_bytes;
            info->frames++;
            info->bytes += fl;
            c->pos += fl;
            return 0;
        }
        uint64_t skip = c->next_offset;
        uint32_t wanted = (uint32_t)(end - (f->base_offset > skip ? f->base_offset : skip));
        if (wanted > out->capacity - n && n)
            break; /* whole batches when we can; a partial one only alone */
        int64_t got = shmlog_codec_decode((const uint8_t *)f + SHMLOG_FRAME_HEADER,
                                          f->payload_bytes, f->record_count, f->base_offset,
                                          f->first_timestamp,
                                          region_pos(log, c->seq, c->pos) + SHMLOG_FRAME_HEADER,
                                          skip, out, n);
        if (got < 0) {
            info->bad_offset = f->base_offset;
            return n ? (int)n : (int)got;
        }
        n += (uint32_t)got;
        if ((uint32_t)got < wanted) {
            /* out is full mid-batch: stay on this frame, resume by offset */
            c->next_offset = out->offsets[n - 1] + 1;
            info->bytes += fl;
            break;
        }
        info->frames++;
        info->bytes += fl;
        c->pos += fl;
        c->next_offset = end;
    }
    return (int)n;
}

int shmlog_log_read_pickled(shmlog_log_t *log, shmlog_cursor_t *c, shmlog_records_out_t *out,
                            uint32_t max_records, uint64_t max_bytes, uint32_t small_below,
                            shmlog_read_info_t *info, uint8_t *dst, size_t cap,
                            uint32_t read_flags)
{
    out->capacity = max_records;
    int n = shmlog_log_read(log, c, out, max_bytes, info);
    if (n < 0)
        return n;
    info->records = (uint32_t)n;
    if (n == 0)
        return info->frame_pos ? SHMLOG_READ_FRAME : SHMLOG_READ_NONE;
    /* large values are sliced straight out of the mapping (one copy, no
     * pickle framing); header lists are decoded in Python */
    if ((out->flags & SHMLOG_REC_HEADERS) || info->bytes >= (uint64_t)n * small_below)
        return SHMLOG_READ_COLUMNS;
    if (n == 1 && (read_flags & SHMLOG_READ_ONE_OK) && out->flags == 0 &&
        (size_t)out->value_lens[0] <= cap) {
        /* a paced consumer's message: the value and two numbers, no pickle
         * to build or to load (that would be most of its Python time) */
        memcpy(dst, log->base + out->value_pos[0], (size_t)out->value_lens[0]);
        info->one_len = (uint32_t)out->value_lens[0];
        info->one_offset = out->offsets[0];
        info->one_timestamp = out->timestamps[0];
        int rc = shmlog_log_validate_read(log, c, info);
        return rc < 0 ? rc : SHMLOG_READ_ONE;
    }
    int64_t k = shmlog_codec_result_pickle(log->base, out, (uint32_t)n, info->first_seq,
                                           info->bytes, dst, cap);
    if (k < 0)
        return SHMLOG_READ_COLUMNS;
    info->pickle_bytes = (uint64_t)k;
    int rc = shmlog_log_validate_read(log, c, info);
    return rc < 0 ? rc : SHMLOG_READ_PICKLE;
}

static int log_wait(shmlog_log_t *log, const shmlog_cursor_t *cursor, uint64_t spin_ns,
                    uint64_t timeout_ns, uint32_t *waited, uint64_t *seen_ns);

int shmlog_log_poll_pickled(shmlog_log_t *log, shmlog_cursor_t *c, shmlog_records_out_t *out,
                            uint32_t max_records, uint64_t max_bytes, uint32_t small_below,
                            shmlog_read_info_t *info, uint8_t *dst, size_t cap, int reader_slot,
                            uint64_t spin_ns, uint64_t timeout_ns, uint32_t read_flags)
{
    int k = shmlog_log_read_pickled(log, c, out, max_records, max_bytes, small_below, info,
                                        dst, cap, read_flags);
    uint32_t waited = SHMLOG_WAITED_NONE;
    uint64_t seen_ns = 0;
    if (k == SHMLOG_READ_NONE && timeout_ns &&
        log_wait(log, c, spin_ns, timeout_ns, &waited, &seen_ns) == 0)
        k = shmlog_log_read_pickled(log, c, out, max_records, max_bytes, small_below, info, dst,
                                    cap, read_flags);
    /* after the reads: each one clears info */
    info->waited = waited;
    info->seen_ns = seen_ns;
    if ((k == SHMLOG_READ_PICKLE || k == SHMLOG_READ_ONE) && reader_slot >= 0)
        shmlog_log_reader_set_position(log, reader_slot, c->next_offset);
    return k;
}

int shmlog_log_read_frames(shmlog_log_t *log, shmlog_cursor_t *c, uint64_t *frame_pos,
                           uint32_t *frame_bytes, uint64_t *frame_end_offsets,
                           uint32_t max_frames, uint64_t max_bytes, shmlog_read_info_t *info)
{
    memset(info, 0, sizeof(*info));
    info->first_seq = c->seq;
    uint32_t n = 0;
    while (n < max_frames && info->bytes < max_bytes) {
        shmlog_frame_hdr_t *f;
        uint32_t fl;
        int rc = next_frame(log, c, &f, &fl);
        if (rc == NF_NOTYET)
            break;
        if (rc == NF_FRAME && n == 0)
            info->first_seq = c->seq;
        if (rc == NF_FRAME && !crc_ok(f)) {
            if (stale_word(log, c->seq, c->pos, &f->frame,
                                FRAME_WORD(c->seq, SHMLOG_FRAME_DATA, fl)))
                break;
            rc = -EBADMSG;
        }
        if (rc < 0) {
            info->bad_offset = c->next_offset;
            return n ? (int)n : rc;
        }
        uint64_t end = f->base_offset + f->record_count;
        frame_pos[n] = region_pos(log, c->seq, c->pos);
        frame_bytes[n] = fl;
        frame_end_offsets[n] = end;
        n++;
        info->frames++;
        info->bytes += fl;
        c->pos += fl;
        if (end > c->next_offset)
            c->next_offset = end;
    }
    return (int)n;
}

int shmlog_log_validate_read(shmlog_log_t *log, shmlog_cursor_t *cursor,
                             const shmlog_read_info_t *info)
{
    if (shmlog_log_validate(log, info->first_seq) == 0)
        return 0;
    /* the chunk was reused while we copied: nothing copied is trusted, and
     * the cursor must not move past what the caller never got */
    *cursor = info->start;
    return -ERANGE;
}

int shmlog_log_validate(shmlog_log_t *log, uint64_t seq)
{
    /* seqlock check: our copies happened before this acquire fence; a
     * reclaimer flips the state to RECLAIMING (a seq_cst CAS, reclaim_oldest
     * in chunk.c) before anyone may reuse it, and the rotator publishes a
     * reused slot's new seq with a release (try_rotate) */
    shmlog_fence_acquire();
    shmlog_chunk_t *d = chunk_of(log, seq);
    uint32_t s = STATE_OF(shmlog_load_acquire_u64(&d->state));
    if (shmlog_load_acquire_u64(&d->seq) != seq ||
        (s != SHMLOG_CHUNK_ACTIVE && s != SHMLOG_CHUNK_SEALED))
        return -ERANGE;
    return 0;
}

static int data_ready(shmlog_log_t *log, const shmlog_cursor_t *cursor)
{
    shmlog_cursor_t c = *cursor;
    shmlog_frame_hdr_t *f;
    uint32_t fl;
    return next_frame(log, &c, &f, &fl) != NF_NOTYET;
}

/* shmlog_log_wait, also saying how the data came (SHMLOG_WAITED_*) and when
 * it was seen: one clock read more, only once the wait ends */
static int log_wait(shmlog_log_t *log, const shmlog_cursor_t *cursor, uint64_t spin_ns,
                    uint64_t timeout_ns, uint32_t *waited, uint64_t *seen_ns)
{
    shmlog_part_hdr_t *h = log->hdr;
    if (data_ready(log, cursor))
        return 0;
    uint64_t start = shmlog_now_ns();
    uint64_t deadline = start + timeout_ns;
    int rc = -ETIMEDOUT, slept = 0;
    /* hungry while spinning and while asleep: producers read it to commit
     * now instead of batching on. Only a sleeper counts in data_waiters, so
     * a committer makes no futex syscall for a reader that spins. */
    shmlog_fetch_add_u32(&h->data_hungry, 1);
    if (spin_ns) {
        /* spin briefly: a futex round trip costs more than a paced producer's gap */
        for (unsigned i = 0;; i++) {
            for (int k = 0; k < 16; k++)
                shmlog_cpu_relax();
            if (data_ready(log, cursor)) {
                *seen_ns = shmlog_now_ns();
                *waited = SHMLOG_WAITED_SPIN;
                shmlog_fetch_sub_u32(&h->data_hungry, 1);
                return 0;
            }
            if ((i & 15) == 15 && shmlog_now_ns() - start >= spin_ns)
                break;
        }
    }
    /* seq_cst RMW: ordered before the data_ready checks below, paired with
     * the committer's CAS on the frame word before it loads data_waiters */
    shmlog_fetch_add_u32(&h->data_waiters, 1);
    for (;;) {
        /* armed: the next commit rings (ring_data_word in log_internal.h) */
        uint32_t v = shmlog_futex_arm(&h->data_futex);
        shmlog_fence_seq_cst(); /* pairs with the committer's CAS before wake_data */
        if (data_ready(log, cursor)) {
            *seen_ns = shmlog_now_ns();
            /* not slept yet: seen at a look, as a spin sees it */
            *waited = slept ? SHMLOG_WAITED_FUTEX : SHMLOG_WAITED_SPIN;
            rc = 0;
            break;
        }
        uint64_t now = shmlog_now_ns();
        if (now >= deadline)
            break;
        uint64_t left = deadline - now;
        /* bounded sleeps: a committer that died between CAS and wake costs us
         * at most this much */
        shmlog_futex_wait(&h->data_futex, v, left < 100000000ull ? left : 100000000ull);
        slept = 1;
    }
    shmlog_fetch_sub_u32(&h->data_waiters, 1);
    shmlog_fetch_sub_u32(&h->data_hungry, 1);
    return rc;
}

int shmlog_log_wait(shmlog_log_t *log, const shmlog_cursor_t *cursor, uint64_t spin_ns,
                    uint64_t timeout_ns)
{
    uint32_t waited;
    uint64_t seen_ns;
    return log_wait(log, cursor, spin_ns, timeout_ns, &waited, &seen_ns);
}

/* the index of the first cursor with data, or -ETIMEDOUT if none has yet */
static int any_ready(shmlog_log_t **logs, shmlog_cursor_t **cursors, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (data_ready(logs[i], cursors[i]))
            return (int)i;
    return -ETIMEDOUT;
}

int shmlog_log_wait_any(shmlog_log_t **logs, shmlog_cursor_t **cursors, uint32_t n,
                        shmlog_log_t *bell, uint64_t spin_ns, uint64_t timeout_ns)
{
    if (n == 0)
        return -EINVAL;
    int r = any_ready(logs, cursors, n);
    if (r >= 0)
        return r;
    if (n == 1 && !bell)
        return shmlog_log_wait(logs[0], cursors[0], spin_ns, timeout_ns);
    uint64_t start = shmlog_now_ns();
    uint64_t deadline = start + timeout_ns;
    volatile uint32_t *fw = bell ? &bell->hdr->bell_futex : &logs[0]->hdr->data_futex;
    volatile uint32_t *ww = bell ? &bell->hdr->bell_waiters : &logs[0]->hdr->data_waiters;
    volatile uint32_t *hw = bell ? &bell->hdr->bell_hungry : &logs[0]->hdr->data_hungry;
    shmlog_fetch_add_u32(hw, 1); /* see shmlog_log_wait: hungry, not yet asleep */
    while (spin_ns && shmlog_now_ns() - start < spin_ns) {
        for (int k = 0; k < 64; k++)
            shmlog_cpu_relax();
        if ((r = any_ready(logs, cursors, n)) >= 0) {
            shmlog_fetch_sub_u32(hw, 1);
            return r;
        }
    }
    shmlog_fetch_add_u32(ww, 1);
    for (;;) {
        uint32_t v = shmlog_futex_arm(fw); /* see shmlog_log_wait */
        shmlog_fence_seq_cst(); /* pairs with the committer's CAS before wake_data */
        if ((r = any_ready(logs, cursors, n)) >= 0)
            break;
        uint64_t now = shmlog_now_ns();
        if (now >= deadline)
            break;
        uint64_t left = deadline - now;
        /* without a doorbell only logs[0] wakes us: keep the sleeps short */
        uint64_t cap = bell ? 100000000ull : 2000000ull;
        shmlog_futex_wait(fw, v, left < cap ? left : cap);
    }
    shmlog_fetch_sub_u32(ww, 1);
    shmlog_fetch_sub_u32(hw, 1);
    return r;
}

/* ------------------------------------------------------------------ seek */

/* Skip whole frames that end at or before the cursor's next_offset. If the
 * committed data ends first, the cursor stops at the committed end. */
static void skip_to(shmlog_log_t *log, shmlog_cursor_t *c, uint64_t committed_end)
{
    uint64_t target = c->next_offset;
    for (;;) {
        shmlog_frame_hdr_t *f;
        uint32_t fl;
        shmlog_cursor_t probe = *c;
        int rc = next_frame(log, &probe, &f, &fl);
        if (rc != NF_FRAME) {
            if (rc == NF_NOTYET && target > committed_end)
                c->next_offset = committed_end;
            return;
        }
        uint64_t end = f->base_offset + f->record_count;
        if (end > target)
            return;
        *c = probe;
        c->pos += fl;
        c->next_offset = target;
        committed_end = end;
    }
}

int shmlog_log_seek(shmlog_log_t *log, shmlog_cursor_t *c, uint64_t offset)
{
    shmlog_part_hdr_t *h = log->hdr;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t aseq = shmlog_load_acquire_u64(&h->active_seq);
        uint64_t first = aseq + 1 >= log->chunk_count ? aseq + 1 - log->chunk_count : 0;
        uint64_t oldest = SHMLOG_NONE;
        for (uint64_t s = first; s <= aseq; s++) {
            shmlog_chunk_t *d = chunk_of(log, s);
            uint32_t st = STATE_OF(shmlog_load_acquire_u64(&d->state));
            if (shmlog_load_acquire_u64(&d->seq) != s ||
                (st != SHMLOG_CHUNK_ACTIVE && st != SHMLOG_CHUNK_SEALED))
                continue;
            if (oldest == SHMLOG_NONE)
                oldest = s;
            if (s < aseq && offset >= chunk_claimed_end(d))
                continue;
            c->seq = s;
            c->pos = 0;
            if (offset < d->base_offset) {
                c->next_offset = d->base_offset;
                if (s != oldest)
                    break; /* raced with a reclaim; retry */
                return shmlog_log_validate(log, s) == 0 ? -ERANGE : -EAGAIN;
            }
            c->next_offset = offset;
            skip_to(log, c, d->base_offset);
            if (shmlog_log_validate(log, s) != 0)
                break;
            return 0;
        }
    }
    return -EAGAIN;
}

int shmlog_log_seek_end(shmlog_log_t *log, shmlog_cursor_t *c)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t aseq = shmlog_load_acquire_u64(&log->hdr->active_seq);
        shmlog_chunk_t *d = chunk_of(log, aseq);
        c->seq = aseq;
        c->pos = 0;
        c->next_offset = d->base_offset;
        if (shmlog_log_validate(log, aseq) != 0)
            continue;
        for (;;) {
            shmlog_frame_hdr_t *f;
            uint32_t fl;
            shmlog_cursor_t probe = *c;
            if (next_frame(log, &probe, &f, &fl) != NF_FRAME)
                break;
            *c = probe;
            c->pos += fl;
            c->next_offset = f->base_offset + f->record_count;
        }
        return 0;
    }
    return -EAGAIN;
}

/* --------------------------------------------------------------- frontier */

int shmlog_log_frontier(shmlog_log_t *log, shmlog_cursor_t *c, uint64_t *seq, uint32_t *pos)
{
    int restarts = 0;
    for (;;) {
        shmlog_frame_hdr_t *f;
        uint32_t fl;
        int rc = next_frame(log, c, &f, &fl);
        if (rc == -ERANGE) {
            /* fell behind reuse: restart from the oldest chunk still there;
             * bounded, because a corrupt chunk table can make that a loop */
            if (++restarts > 4 || shmlog_log_seek(log, c, 0) == -EAGAIN)
                return -EAGAIN;
            continue;
        }
        if (rc < 0)
            return rc;
        if (rc == NF_FRAME) {
            c->pos += fl;
            c->next_offset = f->base_offset + f->record_count;
            continue;
        }
        *seq = c->seq;
        *pos = c->pos;
        shmlog_chunk_t *d = chunk_of(log, c->seq);
        uint64_t seal = shmlog_load_acquire_u64(&d->seal);
        uint64_t t = shmlog_load_acquire_u64(&d->tail);
        if (seal != SHMLOG_NONE) {
            if (c->pos < SHMLOG_TAIL_BYTES(seal))
                return SHMLOG_FRONTIER_BLOCKED;
            return SHMLOG_FRONTIER_FULL;
        }
        if (SHMLOG_TAIL_BYTES(t) > log->chunk_bytes) {
            if (c->pos < log->chunk_bytes && c->pos + SHMLOG_FRAME_HEADER <= log->chunk_bytes &&
                shmlog_load_acquire_u64(&frame_at(log, c->seq, c->pos)->frame) != 0)
                return SHMLOG_FRONTIER_BLOCKED;
            /* an overflowed chunk: anything left below the end is a hole or
             * a pending claim; the seal is what is missing */
            return c->pos < log->chunk_bytes && c->pos < SHMLOG_TAIL_BYTES(t) &&
                           shmlog_load_acquire_u64(&frame_at(log, c->seq, c->pos)->frame) != 0
                       ? SHMLOG_FRONTIER_BLOCKED
                       : SHMLOG_FRONTIER_UNSEALED;
        }
        return c->pos < SHMLOG_TAIL_BYTES(t) ? SHMLOG_FRONTIER_BLOCKED : SHMLOG_FRONTIER_IDLE;
    }
}
