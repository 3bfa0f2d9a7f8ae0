/* log_internal.h — what the files of the partition log (region.c, claim.c,
 * chunk.c, read.c, repair.c) share and nothing else includes: the chunk
 * state and frame word arithmetic, addressing inside a region, the wake-ups,
 * and the few slow-path steps one file calls in another.
 *
 * The hot loops (claim -> write -> commit in claim.c, next_frame -> decode in
 * read.c) each stay inside one file, so splitting by concern costs them no
 * inlining: only slow paths (rotation, sealing, padding) cross files.
 */
#ifndef SHMLOG_LOG_INTERNAL_H
#define SHMLOG_LOG_INTERNAL_H

#include <stdint.h>

#include "atomics.h"
#include "crc32c.h"
#include "futex.h"
#include "layout.h"
#include "log.h"

/* shared by the log's files, not part of the extension's exported surface */
#define SHMLOG_INTERNAL __attribute__((visibility("hidden")))

/* chunk state word (layout.h): owner pid << 32 | transitions << 8 | state.
 * Every transition counts itself, so a word loaded before a stall never
 * equals the word after the slot went round the ring and came back to the
 * same state: the stalled CAS fails instead of acting on the next generation
 * (ABA). 24 bits wrap after 3 million generations of the slot, far more than
 * one stall lasts. */
#define STATE_OF(w)       ((uint32_t)(w) & 0xffu)
#define OWNER_OF(w)       ((uint32_t)((w) >> 32))
#define STATE_NEXT(w, s, p) \
    (((uint64_t)(p) << 32) | (((uint64_t)(w) + 0x100u) & 0xffffff00u) | (uint64_t)(s))
#define FRAME_LEN(w)      ((uint32_t)(w) & ~SHMLOG_FRAME_TYPE_MASK)
#define FRAME_WORD(seq, t, l) \
    (((uint64_t)shmlog_frame_tag(seq) << 32) | (uint64_t)(l) | (uint64_t)(t))

/* The type a frame word has in chunk `seq`: NONE for anything an earlier
 * generation of the slot left there (layout.h, frame word) */
static inline uint32_t frame_kind(uint64_t w, uint64_t seq)
{
    if ((uint32_t)(w >> 32) != shmlog_frame_tag(seq))
        return SHMLOG_FRAME_NONE;
    uint32_t t = (uint32_t)w & SHMLOG_FRAME_TYPE_MASK;
    return t <= SHMLOG_FRAME_PAD ? t : SHMLOG_FRAME_NONE;
}

static inline uint32_t align_frame(uint64_t n)
{
    return (uint32_t)((n + SHMLOG_FRAME_ALIGN - 1) & ~(uint64_t)(SHMLOG_FRAME_ALIGN - 1));
}

static inline shmlog_chunk_t *chunk_of(shmlog_log_t *log, uint64_t seq)
{
    return &log->hdr->chunks[seq % log->chunk_count];
}

static inline uint8_t *chunk_data(shmlog_log_t *log, uint64_t seq)
{
    return log->base + log->header_bytes + (size_t)(seq % log->chunk_count) * log->chunk_bytes;
}

static inline uint64_t region_pos(shmlog_log_t *log, uint64_t seq, uint32_t pos)
{
    return (uint64_t)log->header_bytes + (seq % log->chunk_count) * (uint64_t)log->chunk_bytes + pos;
}

static inline shmlog_frame_hdr_t *frame_at(shmlog_log_t *log, uint64_t seq, uint32_t pos)
{
    return (shmlog_frame_hdr_t *)(chunk_data(log, seq) + pos);
}

/* CRC of a frame: header bytes [12, 64) then the payload */
static inline uint32_t frame_crc(const shmlog_frame_hdr_t *f)
{
    uint32_t c = shmlog_crc32c(0, (const uint8_t *)f + 12, SHMLOG_FRAME_HEADER - 12);
    return shmlog_crc32c(c, (const uint8_t *)f + SHMLOG_FRAME_HEADER, f->payload_bytes);
}

/* end offset of a chunk as far as claims go (holes included) */
static inline uint64_t chunk_claimed_end(shmlog_chunk_t *d)
{
    uint64_t seal = shmlog_load_acquire_u64(&d->seal);
    if (seal != SHMLOG_NONE)
        return d->base_offset + SHMLOG_TAIL_RECORDS(seal);
    return d->base_offset + SHMLOG_TAIL_RECORDS(shmlog_load_acquire_u64(&d->tail));
}

/* Wake producers parked in shmlog_chunk_wait_rotation. The fence orders
 * whatever freed space (a state store, a position) before the load of
 * space_waiters; it pairs with the waiter's seq_cst increment of
 * space_waiters before its last look at the chunk (Dekker: one of the two
 * sees the other, so no wake-up is lost). */
static inline void wake_space(shmlog_log_t *log)
{
    shmlog_fence_seq_cst();
    if (shmlog_load_relaxed_u32(&log->hdr->space_waiters)) {
        shmlog_fetch_add_u32(&log->hdr->space_futex, 1);
        shmlog_futex_wake(&log->hdr->space_futex, INT32_MAX);
    }
}

/* The futex words of data waiters (data_futex, the doorbell's bell_futex)
 * are a generation in the upper 31 bits and an "armed" flag in bit 0. A
 * sleeper sets the flag (shmlog_futex_arm) before its last look at the data
 * and sleeps on the armed value; the first committer after it clears the
 * flag and bumps the generation in one CAS, and only that committer pays
 * the FUTEX_WAKE syscall. The committers after it, until the woken reader
 * runs and re-arms, find the flag clear and make no syscall: a reader
 * woken on a loaded host may take tens of microseconds to run, and a
 * stream commits many times meanwhile. */
static inline void ring_data_word(volatile uint32_t *word)
{
    uint32_t w = shmlog_load_relaxed_u32(word);
    while (w & 1u) {
        if (shmlog_cas_u32(word, &w, (w & ~1u) + 2u)) {
            shmlog_futex_wake(word, INT32_MAX);
            return;
        }
    }
}

/* the value to sleep on: the word with the flag set (see ring_data_word) */
static inline uint32_t shmlog_futex_arm(volatile uint32_t *word)
{
    return shmlog_fetch_or_u32(word, 1u) | 1u;
}

static inline void wake_data(shmlog_log_t *log)
{
    /* the caller's CAS on the frame word was seq_cst: it is ordered before
     * these loads, which pair with the waiter's increment of data_waiters
     * and its arming of the futex word in shmlog_log_wait */
    if (shmlog_load_relaxed_u32(&log->hdr->data_waiters))
        ring_data_word(&log->hdr->data_futex);
    if (log->bell_waiters && shmlog_load_relaxed_u32(log->bell_waiters))
        ring_data_word(log->bell_futex);
}

/* A producer slot without a claim in flight. claim_seq goes first (release):
 * it pairs with the acquire-loads of claim_seq by which the reclaimer
 * (claimers_inside), readers (stale_word) and the reaper find claims. */
static inline void clear_claim(shmlog_producer_slot_t *ps)
{
    shmlog_store_release_u64(&ps->claim_seq, SHMLOG_NONE);
    shmlog_store_relaxed_u64(&ps->claim_tail, SHMLOG_NONE);
}

/* chunk.c: seal chunk `seq` at (bytes, records) if nobody has yet */
SHMLOG_INTERNAL void shmlog_chunk_seal(shmlog_log_t *log, uint64_t seq, uint32_t bytes,
                                       uint32_t records);
/* chunk.c: the active chunk `seq` is full: help it rotate, or wait for
 * space until deadline. 0 rotated (by anyone), -EAGAIN at the deadline */
SHMLOG_INTERNAL int shmlog_chunk_wait_rotation(shmlog_log_t *log, uint64_t seq,
                                               uint64_t deadline);
/* repair.c: CAS the frame word at (seq, pos) from `expected` to PAD|fl.
 * 1 if this call padded it, 0 if the word was no longer `expected` */
SHMLOG_INTERNAL int shmlog_frame_pad(shmlog_log_t *log, uint64_t seq, uint32_t pos,
                                     uint64_t expected, uint32_t fl);

#endif
