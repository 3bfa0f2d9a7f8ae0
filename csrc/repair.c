/* repair.c — the reaper's calls: abort a claim whose producer died (or
 * stalls past the claim timeout) by padding its frame, seal a chunk whose
 * first overflower died, release dead producers' and readers' slots, and
 * undo chunk transitions a dead process left half done.
 *
 * Each repair is a CAS that a slow (not dead) owner can also race: exactly
 * one of them wins, and the loser sees it (a producer finds itself fenced,
 * a stalled reclaim's CAS fails on the counted state word).
 */
#include <errno.h>

#include "log_internal.h"

int shmlog_frame_pad(shmlog_log_t *log, uint64_t seq, uint32_t pos, uint64_t expected, uint32_t fl)
{
    shmlog_frame_hdr_t *f = frame_at(log, seq, pos);
    if (!shmlog_cas_u64(&f->frame, &expected, FRAME_WORD(seq, SHMLOG_FRAME_PAD, fl)))
        return 0;
    shmlog_fetch_add_relaxed_u64(&log->hdr->aborted_batches, 1);
    wake_data(log);
    return 1;
}

/* A claimer of (seq, pos) that has not stamped its word yet (stalled, or the
 * reaper was forced) must give the claim up rather than write over our pad:
 * fence it before padding. It then claims anew (claim()), and readers see
 * the fence and trust the pad (stale_word). A claimer whose position
 * is not known yet is fenced too when `unknown` says it may be this one. */
static void fence_claimers(shmlog_log_t *log, uint64_t seq, uint32_t pos, int unknown)
{
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        shmlog_producer_slot_t *s = &log->hdr->producers[i];
        if (shmlog_load_acquire_u64(&s->claim_seq) != seq)
            continue;
        uint64_t ct = shmlog_load_acquire_u64(&s->claim_tail);
        if (ct == SHMLOG_NONE ? unknown
                              : SHMLOG_TAIL_BYTES(ct) == pos &&
                                    !shmlog_load_acquire_u32(&s->claim_stamped))
            /* pairs with the claimer's acquire-load of fenced in its
             * stamping loop (claim.c), and with stale_word's (read.c) */
            shmlog_store_release_u32(&s->fenced, 1);
    }
}

/* does a claim at (seq, pos) exist whose producer has not stamped its word
 * (and that no reaper has fenced)? Then the word there is stale. */
static int unstamped_claim_at(shmlog_log_t *log, uint64_t seq, uint32_t pos)
{
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        shmlog_producer_slot_t *s = &log->hdr->producers[i];
        if (shmlog_load_acquire_u64(&s->claim_seq) != seq)
            continue;
        uint64_t ct = shmlog_load_acquire_u64(&s->claim_tail);
        if (ct != SHMLOG_NONE && SHMLOG_TAIL_BYTES(ct) == pos &&
            !shmlog_load_acquire_u32(&s->claim_stamped) && !shmlog_load_acquire_u32(&s->fenced))
            return 1;
    }
    return 0;
}

int shmlog_log_unblock(shmlog_log_t *log, uint64_t seq, uint32_t pos, int force)
{
    const uint32_t cap = log->chunk_bytes;
    shmlog_chunk_t *d = chunk_of(log, seq);
    if (shmlog_log_validate(log, seq) != 0 || pos % SHMLOG_FRAME_ALIGN ||
        pos + SHMLOG_FRAME_HEADER > cap)
        return -EINVAL;
    shmlog_frame_hdr_t *f = frame_at(log, seq, pos);
    uint64_t w = shmlog_load_acquire_u64(&f->frame);
    uint32_t kind = frame_kind(w, seq);
    if (kind != SHMLOG_FRAME_NONE && unstamped_claim_at(log, seq, pos))
        kind = SHMLOG_FRAME_NONE; /* stale bytes that carry our tag: a hole */
    if (kind == SHMLOG_FRAME_CLAIMED) {
        uint32_t fl = FRAME_LEN(w);
        if (fl < SHMLOG_FRAME_HEADER || fl > cap - pos)
            return -EBADMSG;
        fence_claimers(log, seq, pos, 0); /* in case the word was stale after all */
        return shmlog_frame_pad(log, seq, pos, w, fl);
    }
    if (kind != SHMLOG_FRAME_NONE)
        return 0; /* committed or already padded */
    uint64_t seal = shmlog_load_acquire_u64(&d->seal);
    uint32_t tb = SHMLOG_TAIL_BYTES(shmlog_load_acquire_u64(&d->tail));
    uint32_t limit = seal != SHMLOG_NONE ? SHMLOG_TAIL_BYTES(seal) : (tb < cap ? tb : cap);
    if (pos >= limit)
        return 0; /* nobody claimed this space */
    /* The claimer died (or stalls) between its fetch-add and its header. A
     * slot that knows its claim gives the exact size; otherwise the hole runs
     * to the next header or known claim — safe only when no live producer
     * may still be between fetch-add and header, hence the in-flight check. */
    uint32_t end = limit;
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        shmlog_producer_slot_t *s = &log->hdr->producers[i];
        if (shmlog_load_acquire_u64(&s->claim_seq) != seq)
            continue;
        uint64_t ct = shmlog_load_acquire_u64(&s->claim_tail);
        uint32_t pid = shmlog_load_acquire_u32(&s->pid);
        if (ct == SHMLOG_NONE) {
            if (pid && shmlog_pid_alive(pid) && !force)
                return -EAGAIN;
            continue;
        }
        uint32_t cpos = SHMLOG_TAIL_BYTES(ct);
        if (cpos == pos && (uint64_t)pos + s->claim_bytes <= limit) {
            end = pos + s->claim_bytes;
            break;
        }
        if (cpos > pos && cpos < end)
            end = cpos;
    }
    /* the hole runs to the next word of this generation */
    for (uint32_t q = pos + SHMLOG_FRAME_ALIGN; q < end; q += SHMLOG_FRAME_ALIGN) {
        if (frame_kind(shmlog_load_acquire_u64(&frame_at(log, seq, q)->frame), seq) !=
            SHMLOG_FRAME_NONE) {
            end = q;
            break;
        }
    }
    /* a claimer whose position is unknown can own pos only if it was there
     * before our scan, which let such claimers pass only when forced (or
     * dead); one that started since claims beyond the tail we read */
    fence_claimers(log, seq, pos, force);
    return shmlog_frame_pad(log, seq, pos, w, end - pos);
}

int shmlog_log_force_seal(shmlog_log_t *log, uint64_t seq)
{
    shmlog_chunk_t *d = chunk_of(log, seq);
    if (shmlog_log_validate(log, seq) != 0)
        return -EINVAL;
    if (shmlog_load_acquire_u64(&d->seal) != SHMLOG_NONE)
        return 0;
    uint64_t t = shmlog_load_acquire_u64(&d->tail);
    if (SHMLOG_TAIL_BYTES(t) <= log->chunk_bytes)
        return 0; /* not overflowed: nothing to seal */
    /* the first overflower is gone: seal at the chunk's end with every
     * claimed record counted, so the offsets the lost claims took become a
     * hole and no offset is ever handed out twice */
    shmlog_chunk_seal(log, seq, log->chunk_bytes, SHMLOG_TAIL_RECORDS(t));
    return 1;
}

int shmlog_log_reap_producer(shmlog_log_t *log, int slot)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_PRODUCERS)
        return -EINVAL;
    shmlog_producer_slot_t *s = &log->hdr->producers[slot];
    uint32_t pid = shmlog_load_acquire_u32(&s->pid);
    int aborted = 0;
    uint64_t seq = shmlog_load_acquire_u64(&s->claim_seq);
    uint64_t ct = shmlog_load_acquire_u64(&s->claim_tail);
    if (seq != SHMLOG_NONE && ct != SHMLOG_NONE && shmlog_log_validate(log, seq) == 0) {
        uint32_t pb = SHMLOG_TAIL_BYTES(ct), fb = s->claim_bytes;
        if ((uint64_t)pb + fb <= log->chunk_bytes) {
            shmlog_frame_hdr_t *f = frame_at(log, seq, pb);
            uint64_t w = shmlog_load_acquire_u64(&f->frame);
            /* unstamped and unfenced: whatever the word holds is stale,
             * even if it reads as a frame of this generation */
            int stale = !shmlog_load_acquire_u32(&s->claim_stamped) &&
                        !shmlog_load_acquire_u32(&s->fenced);
            if (stale || w == FRAME_WORD(seq, SHMLOG_FRAME_CLAIMED, fb)) {
                shmlog_store_release_u32(&s->fenced, 1); /* see fence_claimers */
                aborted = shmlog_frame_pad(log, seq, pb, w, fb);
            }
        } else if (pb <= log->chunk_bytes) {
            shmlog_chunk_seal(log, seq, pb, SHMLOG_TAIL_RECORDS(ct));
        }
    }
    s->aborted += (uint64_t)aborted;
    clear_claim(s);
    uint32_t expected = pid;
    if (pid)
        shmlog_cas_u32(&s->pid, &expected, 0);
    wake_space(log);
    return aborted;
}

int shmlog_log_reap_reader(shmlog_log_t *log, int slot)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_READERS)
        return -EINVAL;
    /* the same release the reader itself would have done */
    shmlog_log_reader_release(log, slot);
    return 0;
}

int shmlog_log_repair_chunks(shmlog_log_t *log, uint32_t dead_pid)
{
    int repaired = 0;
    for (uint32_t i = 0; i < log->chunk_count; i++) {
        shmlog_chunk_t *d = &log->hdr->chunks[i];
        uint64_t st = shmlog_load_acquire_u64(&d->state);
        uint32_t s = STATE_OF(st), owner = OWNER_OF(st);
        if ((s != SHMLOG_CHUNK_RECLAIMING && s != SHMLOG_CHUNK_OPENING &&
             s != SHMLOG_CHUNK_RELEASING) ||
            owner != dead_pid)
            continue;
        /* Both are redone from scratch. A reclaim goes back to SEALED, not on
         * to FREE: it may have died before it checked claims and pins, and
         * its data is intact (only state words moved; a chunk is not
         * zeroed). An opening that never published is as if it never began. */
        uint64_t to = STATE_NEXT(st, SHMLOG_CHUNK_SEALED, 0);
        if (s == SHMLOG_CHUNK_OPENING) {
            /* published to the next rotator by the state CAS below, which
             * its acquire-load of a FREE state pairs with (try_rotate) */
            shmlog_store_release_u64(&d->tail, 0);
            to = STATE_NEXT(st, SHMLOG_CHUNK_FREE, 0);
        } else if (s == SHMLOG_CHUNK_RELEASING) {
            /* its data was freed before the release began; `released` was
             * set before any page went, so FREE is safe whatever the dead
             * releaser got to: the next opener reserves if the flag says so */
            to = STATE_NEXT(st, SHMLOG_CHUNK_FREE, 0);
        }
        if (shmlog_cas_u64(&d->state, &st, to))
            repaired++;
    }
    if (repaired)
        wake_space(log);
    return repaired;
}
