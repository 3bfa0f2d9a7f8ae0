/* chunk.c — the chunk ring: sealing a full chunk, rotating to the next
 * free one, and reclaiming the oldest once nothing gates it (readers of
 * memory topics, the spiller of disk topics, zero-copy pins), plus the
 * gauges and progress words that gating reads.
 *
 *   seal    the first claimer to overflow a chunk knows its exact final
 *           length and record count, CASes them into the chunk's seal word
 *           and rotates to the next free chunk;
 *   reuse   the oldest sealed chunk is freed once nothing gates it. It is
 *           not zeroed: frame words carry their chunk's generation
 *           (layout.h), so what it held reads as "not yet".
 * Every state change is a CAS on a counted state word (STATE_NEXT), so a
 * process SIGKILLed between two steps leaves a state the reaper can finish
 * or undo (repair.c), and a stalled one cannot act on the next generation.
 */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log_internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack the name */
#endif

/* Test points: see log.h. NULL (one predicted branch) outside tests. */
static shmlog_point_fn test_point;

void shmlog_set_test_point(shmlog_point_fn fn)
{
    test_point = fn;
}

#define AT_POINT(p)                                   \
    do {                                              \
        if (__builtin_expect(test_point != NULL, 0)) \
            test_point(p);                            \
    } while (0)

/* The thread's hook before it blocks (log.h): per thread, since each
 * caller decides for its own call whether it holds a lock to drop. */
static __thread shmlog_block_fn block_hook;

void shmlog_set_block_hook(shmlog_block_fn fn)
{
    block_hook = fn;
}

static void before_blocking(void)
{
    shmlog_block_fn fn = block_hook;
    if (__builtin_expect(fn != NULL, 0)) {
        block_hook = NULL; /* once: the caller takes its lock back after the call */
        fn();
    }
}

static void complete_seal_state(shmlog_chunk_t *d)
{
    uint64_t st = shmlog_load_acquire_u64(&d->state);
    if (STATE_OF(st) == SHMLOG_CHUNK_ACTIVE && shmlog_load_acquire_u64(&d->seal) != SHMLOG_NONE) {
        AT_POINT(SHMLOG_POINT_SEAL);
        shmlog_cas_u64(&d->state, &st, STATE_NEXT(st, SHMLOG_CHUNK_SEALED, 0));
    }
}

void shmlog_chunk_seal(shmlog_log_t *log, uint64_t seq, uint32_t bytes, uint32_t records)
{
    shmlog_chunk_t *d = chunk_of(log, seq);
    if (shmlog_load_acquire_u64(&d->seq) != seq)
        return;
    uint64_t none = SHMLOG_NONE;
    shmlog_cas_u64(&d->seal, &none, SHMLOG_TAIL_PACK(bytes, records));
    complete_seal_state(d);
    /* readers parked at the chunk's end can move on once it rotates; wake
     * producers parked on the seal */
    wake_space(log);
}

/* ------------------------------------------------- released chunks
 *
 * A disk topic's chunk that is spilled and behind every live reader holds
 * nothing anyone reads from shared memory: shmlog_log_release frees it and
 * gives its pages back to the tmpfs, so an idle partition costs its header
 * and its active chunk. The chunk's `released` word says so; whoever opens
 * it next (try_rotate) reserves its pages again first. Both are rare (once
 * per chunk and idle period), never on the claim/commit path.
 */

/* the pages of chunk slot `index`: rounded outwards (every page a write into
 * the chunk touches) or inwards (only pages no neighbour shares; chunk_bytes
 * is a multiple of 64, not necessarily of the page size) */
static size_t chunk_pages(shmlog_log_t *log, uint32_t index, int outwards, uint8_t **start)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE); /* from the aux vector: no syscall */
    uintptr_t lo = (uintptr_t)(log->base + log->header_bytes + (size_t)index * log->chunk_bytes);
    uintptr_t hi = lo + log->chunk_bytes;
    if (outwards) {
        lo &= ~(page - 1);
        hi = (hi + page - 1) & ~(page - 1);
    } else {
        lo = (lo + page - 1) & ~(page - 1);
        hi &= ~(page - 1);
    }
    *start = (uint8_t *)lo;
    return hi > lo ? (size_t)(hi - lo) : 0;
}

/* Allocate the pages of chunk slot `index` again before anyone writes into
 * it. A write that first touches a tmpfs page when the tmpfs is full is a
 * SIGBUS; MADV_POPULATE_WRITE allocates every page now and returns an
 * error instead. 0, or -ENOMEM when the tmpfs has no room. */
static int reserve_chunk(shmlog_log_t *log, uint32_t index)
{
    uint8_t *p;
    size_t len = chunk_pages(log, index, 1, &p);
    for (;;) {
        if (madvise(p, len, MADV_POPULATE_WRITE) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        /* EINVAL: a kernel before 5.14 cannot populate; its pages come on
         * first touch (the supervisor's free-space checks are all there is) */
        return errno == EINVAL ? 0 : -ENOMEM;
    }
}

/* 0 if active_seq moved past seq (by us or anyone), -EAGAIN if the next chunk
 * is not free yet, -ENOMEM if its pages cannot be reserved */
static int try_rotate(shmlog_log_t *log, uint64_t seq)
{
    shmlog_part_hdr_t *h = log->hdr;
    if (shmlog_load_acquire_u64(&h->active_seq) != seq)
        return 0;
    shmlog_chunk_t *d = chunk_of(log, seq);
    uint64_t seal = shmlog_load_acquire_u64(&d->seal);
    if (seal == SHMLOG_NONE || shmlog_load_acquire_u64(&d->seq) != seq)
        return -EAGAIN;
    complete_seal_state(d);
    AT_POINT(SHMLOG_POINT_ROTATE);
    shmlog_chunk_t *n = chunk_of(log, seq + 1);
    uint64_t st = shmlog_load_acquire_u64(&n->state);
    if (STATE_OF(st) == SHMLOG_CHUNK_ACTIVE && shmlog_load_acquire_u64(&n->seq) == seq + 1) {
        /* opened by someone who died before publishing it: finish the job */
        uint64_t expected = seq;
        shmlog_cas_u64(&h->active_seq, &expected, seq + 1);
        return 0;
    }
    if (STATE_OF(st) != SHMLOG_CHUNK_FREE)
        return -EAGAIN;
    /* the acquire-load of a FREE state above pairs with the release that
     * freed it (reclaim_oldest, or an undone opening below): we see its
     * tail reset */
    uint64_t opening = STATE_NEXT(st, SHMLOG_CHUNK_OPENING, log->pid);
    if (!shmlog_cas_u64(&n->state, &st, opening))
        return shmlog_load_acquire_u64(&h->active_seq) != seq ? 0 : -EAGAIN;
    if (shmlog_load_acquire_u64(&h->active_seq) != seq) {
        /* we stalled after checking seq was active, and the ring moved on:
         * this FREE slot is someone else's next chunk, not seq + 1 */
        shmlog_store_release_u64(&n->state, STATE_NEXT(opening, SHMLOG_CHUNK_FREE, 0));
        wake_space(log);
        return 0;
    }
    /* the CAS above read the FREE that the releaser stored (release) after
     * setting `released`: we see the flag. Cleared only once the pages are
     * back, and before the state is published ACTIVE */
    if (shmlog_load_acquire_u64(&n->released)) {
        /* charge the data dir's account before any page is taken: past the
         * budget this chunk waits, as a busy one does, until the
         * supervisor's release pass frees pages elsewhere */
        if (log->budget && shmlog_budget_charge(log->budget, log->chunk_bytes) != 0) {
            shmlog_store_release_u64(&n->state, STATE_NEXT(opening, SHMLOG_CHUNK_FREE, 0));
            return -EAGAIN;
        }
        AT_POINT(SHMLOG_POINT_RESERVE);
        before_blocking(); /* populating a chunk's pages may take milliseconds */
        if (reserve_chunk(log, (uint32_t)((seq + 1) % log->chunk_count)) != 0) {
            /* as if we never began: still FREE, still released */
            if (log->budget)
                shmlog_budget_credit(log->budget, log->chunk_bytes);
            shmlog_store_release_u64(&n->state, STATE_NEXT(opening, SHMLOG_CHUNK_FREE, 0));
            wake_space(log);
            return -ENOMEM;
        }
        shmlog_store_release_u64(&n->released, 0);
    }
    /* Publish the opened chunk: base_offset and seal (plain stores) and the
     * tail, then seq, then state, each a release. The seq and state stores
     * pair with the acquire-loads of d->seq and d->state in claim()
     * (claim.c), next_frame() and shmlog_log_validate() (read.c): whoever
     * sees seq + 1 ACTIVE sees its base offset, an unset seal and tail 0. */
    n->base_offset = d->base_offset + SHMLOG_TAIL_RECORDS(seal);
    n->seal = SHMLOG_NONE;
    shmlog_store_release_u64(&n->tail, 0);
    shmlog_store_release_u64(&n->seq, seq + 1);
    shmlog_store_release_u64(&n->state, STATE_NEXT(opening, SHMLOG_CHUNK_ACTIVE, 0));
    /* seq_cst CAS: pairs with the acquire-load of active_seq that starts
     * every claim, so a claimer that sees seq + 1 finds the chunk open */
    uint64_t expected = seq;
    shmlog_cas_u64(&h->active_seq, &expected, seq + 1);
    shmlog_fetch_add_relaxed_u64(&h->rotations, 1);
    wake_space(log);
    return 0;
}

/* The lowest offset something still needs: the spiller of a disk topic,
 * gating readers of a memory topic, zero-copy pins. A holder below `below`
 * is checked for life (a dead one is released, this is a slow path) and
 * ends the search: the caller only asks whether anything is below. */
static uint64_t lowest_needed(shmlog_log_t *log, uint64_t below)
{
    shmlog_part_hdr_t *h = log->hdr;
    uint32_t flags = shmlog_load_relaxed_u32(&h->flags);
    uint64_t need = SHMLOG_NONE;
    if (flags & SHMLOG_F_GATE_SPILL) {
        need = shmlog_load_acquire_u64(&h->spilled_offset);
        if (need < below)
            return need;
    }
    for (uint32_t i = 0; i < SHMLOG_MAX_READERS; i++) {
        shmlog_reader_slot_t *r = &h->readers[i];
        uint32_t pid = shmlog_load_acquire_u32(&r->pid);
        if (!pid)
            continue;
        uint64_t v = shmlog_load_acquire_u64(&r->pin);
        if ((flags & SHMLOG_F_GATE_READERS) && r->gating) {
            uint64_t pos = shmlog_load_acquire_u64(&r->position);
            if (pos < v)
                v = pos;
        }
        if (v < below) {
            if (!shmlog_pid_alive(pid)) {
                shmlog_log_reap_reader(log, (int)i);
                continue;
            }
            return v;
        }
        if (v < need)
            need = v;
    }
    return need;
}

/* Does anything still need the sealed chunk ending at offset `end`? Dead
 * readers found on the way are released (this is a slow path). */
static int chunk_gated(shmlog_log_t *log, uint64_t end)
{
    return lowest_needed(log, end) < end;
}

/* does a live reader pin an offset below `end` (a zero-copy view)? */
static int pinned_below(shmlog_log_t *log, uint64_t end)
{
    for (uint32_t i = 0; i < SHMLOG_MAX_READERS; i++) {
        shmlog_reader_slot_t *r = &log->hdr->readers[i];
        if (shmlog_load_acquire_u32(&r->pid) && shmlog_load_acquire_u64(&r->pin) < end)
            return 1;
    }
    return 0;
}

/* is a producer possibly about to fetch-add on chunk seq? (see claim) */
static int claimers_inside(shmlog_log_t *log, uint64_t seq)
{
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        shmlog_producer_slot_t *s = &log->hdr->producers[i];
        if (shmlog_load_acquire_u64(&s->claim_seq) != seq)
            continue;
        uint32_t pid = shmlog_load_acquire_u32(&s->pid);
        if (pid && !shmlog_pid_alive(pid)) {
            shmlog_log_reap_producer(log, (int)i);
            continue;
        }
        return 1;
    }
    return 0;
}

/* free the chunk in the k-th slot after the active one (k = 1: the oldest
 * of a full ring, the next one rotation opens) if nothing gates it and it
 * ends at or below `below`; 0 freed, -EAGAIN not now */
static int reclaim_oldest(shmlog_log_t *log, uint32_t k, uint64_t below)
{
    shmlog_part_hdr_t *h = log->hdr;
    uint64_t aseq = shmlog_load_acquire_u64(&h->active_seq);
    shmlog_chunk_t *n = chunk_of(log, aseq + k);
    uint64_t st = shmlog_load_acquire_u64(&n->state);
    if (STATE_OF(st) == SHMLOG_CHUNK_FREE)
        return 0;
    if (STATE_OF(st) == SHMLOG_CHUNK_ACTIVE)
        complete_seal_state(n);
    st = shmlog_load_acquire_u64(&n->state);
    if (STATE_OF(st) != SHMLOG_CHUNK_SEALED)
        return -EAGAIN;
    uint64_t nseq = shmlog_load_acquire_u64(&n->seq);
    uint64_t seal = shmlog_load_acquire_u64(&n->seal);
    if (nseq >= aseq || seal == SHMLOG_NONE)
        return -EAGAIN;
    uint64_t end = n->base_offset + SHMLOG_TAIL_RECORDS(seal);
    if (end > below || chunk_gated(log, end))
        return -EAGAIN;
    AT_POINT(SHMLOG_POINT_RECLAIM);
    /* fails if the slot changed at all since we loaded st (STATE_NEXT): then
     * nseq, end and the gating check above are another generation's */
    uint64_t reclaiming = STATE_NEXT(st, SHMLOG_CHUNK_RECLAIMING, log->pid);
    if (!shmlog_cas_u64(&n->state, &st, reclaiming))
        return -EAGAIN;
    /* Dekker with claim(): it publishes claim_seq, fences, then re-checks the
     * chunk state; we publish RECLAIMING, fence, then look at the slots. One
     * of the two sees the other, so no stale fetch-add lands in a reused chunk. */
    shmlog_fence_seq_cst();
    /* and with a zero-copy reader: it publishes its pin, fences, then
     * validates the chunk state; we re-check pins after our CAS */
    if (claimers_inside(log, nseq) || pinned_below(log, end)) {
        /* back to SEALED, untouched: pairs with the acquire-loads of the
         * state in shmlog_log_validate, so a reader's copy stays good */
        shmlog_store_release_u64(&n->state, STATE_NEXT(reclaiming, SHMLOG_CHUNK_SEALED, 0));
        return -EAGAIN;
    }
    /* No zeroing: the next generation's frame words carry its own tag, so
     * what this one leaves behind reads as "not yet" (layout.h), and the
     * producers' path never pays for writing a whole chunk of zeros. */
    uint64_t cur = shmlog_load_acquire_u64(&h->start_offset);
    while (cur < end && !shmlog_cas_u64(&h->start_offset, &cur, end))
        ;
    shmlog_store_release_u64(&n->tail, 0);
    shmlog_fetch_add_relaxed_u64(&h->reclaimed_chunks, 1);
    /* FREE last: pairs with the acquire-load of the state in try_rotate,
     * so the rotator that opens this slot sees its tail reset and the
     * start offset moved past it */
    shmlog_store_release_u64(&n->state, STATE_NEXT(reclaiming, SHMLOG_CHUNK_FREE, 0));
    return 0;
}

int shmlog_log_reclaim(shmlog_log_t *log)
{
    int freed = 0;
    for (uint32_t i = 0; i + 1 < log->chunk_count; i++) {
        uint64_t aseq = shmlog_load_acquire_u64(&log->hdr->active_seq);
        shmlog_chunk_t *n = chunk_of(log, aseq + 1);
        if (STATE_OF(shmlog_load_acquire_u64(&n->state)) == SHMLOG_CHUNK_FREE)
            break;
        if (reclaim_oldest(log, 1, SHMLOG_NONE) != 0)
            break;
        freed++;
    }
    if (freed)
        wake_space(log);
    return freed;
}

/* A producer waiting for chunk `seq` that finds it RELEASING for a process
 * that died (the supervisor, killed mid-release) puts it back itself: the
 * reaper that repairs other dead owners' chunks is that supervisor, and
 * producers keep moving while it restarts (DESIGN.md, invariant 3). A slow
 * path: one kill(pid, 0). */
static void release_orphan(shmlog_log_t *log, uint64_t seq)
{
    uint64_t st = shmlog_load_acquire_u64(&chunk_of(log, seq)->state);
    uint32_t owner = OWNER_OF(st);
    if (STATE_OF(st) == SHMLOG_CHUNK_RELEASING && owner && !shmlog_pid_alive(owner))
        shmlog_log_repair_chunks(log, owner);
}

/* The lowest offset a live reader of any kind is at or still reads in place
 * (position or pin); NONE without readers. Dead ones count until the reaper
 * releases their slots: that only delays a release. */
static uint64_t readers_low(shmlog_log_t *log)
{
    uint64_t low = SHMLOG_NONE;
    for (uint32_t i = 0; i < SHMLOG_MAX_READERS; i++) {
        shmlog_reader_slot_t *r = &log->hdr->readers[i];
        if (!shmlog_load_acquire_u32(&r->pid))
            continue;
        uint64_t pos = shmlog_load_acquire_u64(&r->position);
        uint64_t pin = shmlog_load_acquire_u64(&r->pin);
        if (pos < low)
            low = pos;
        if (pin < low)
            low = pin;
    }
    return low;
}

int shmlog_log_release(shmlog_log_t *log)
{
    shmlog_part_hdr_t *h = log->hdr;
    /* Free the sealed chunks that nothing gates and that every live reader
     * has passed (gating or not: a reader of a disk topic still inside a
     * chunk keeps it, and its pages, until it moves on). */
    for (uint32_t i = 0; i < log->chunk_count; i++) {
        /* an earlier supervisor died mid-release: finish its undo first */
        uint64_t st = shmlog_load_acquire_u64(&h->chunks[i].state);
        if (STATE_OF(st) == SHMLOG_CHUNK_RELEASING && OWNER_OF(st) != log->pid)
            release_orphan(log, i);
    }
    uint64_t below = readers_low(log);
    for (uint32_t k = 1; k < log->chunk_count; k++) {
        /* oldest first, so the start offset only moves forward: slots
         * after the active one that are FREE already are skipped */
        uint64_t aseq = shmlog_load_acquire_u64(&h->active_seq);
        shmlog_chunk_t *n = chunk_of(log, aseq + k);
        if (STATE_OF(shmlog_load_acquire_u64(&n->state)) == SHMLOG_CHUNK_FREE)
            continue;
        if (reclaim_oldest(log, k, below) != 0)
            break;
    }
    /* Then give back the pages of every FREE chunk still holding them. A
     * FREE chunk is already "reused" for readers (shmlog_log_validate
     * rejects a copy from it: its state went through RECLAIMING), so what
     * the punch turns into zeros was never trusted. RELEASING keeps
     * rotators out while the pages go; they wait as for any busy chunk. */
    int released = 0, rc = 0;
    for (uint32_t i = 0; i < log->chunk_count; i++) {
        shmlog_chunk_t *d = &h->chunks[i];
        uint64_t st = shmlog_load_acquire_u64(&d->state);
        if (STATE_OF(st) != SHMLOG_CHUNK_FREE || shmlog_load_acquire_u64(&d->released))
            continue;
        uint64_t releasing = STATE_NEXT(st, SHMLOG_CHUNK_RELEASING, log->pid);
        if (!shmlog_cas_u64(&d->state, &st, releasing))
            continue;
        /* the flag before the punch: a releaser killed from here on leaves
         * a chunk that is reserved again before use, whether or not its
         * pages went (repair.c puts it back to FREE) */
        shmlog_store_release_u64(&d->released, 1);
        AT_POINT(SHMLOG_POINT_RELEASE);
        uint8_t *p;
        size_t len = chunk_pages(log, i, 0, &p);
        if (len && madvise(p, len, MADV_REMOVE) != 0)
            rc = -errno;
        /* credited once the pages are gone (or may be): a releaser killed
         * before this leaves the count high, never low (layout.h) */
        if (!rc && log->budget)
            shmlog_budget_credit(log->budget, log->chunk_bytes);
        /* pairs with the rotator's CAS on the FREE state (try_rotate): it
         * sees `released` set */
        shmlog_store_release_u64(&d->state, STATE_NEXT(releasing, SHMLOG_CHUNK_FREE, 0));
        if (rc)
            break;
        released++;
    }
    if (released || rc)
        wake_space(log);
    return released ? released : rc;
}

/* ------------------------------------------------- the data dir's account */

void shmlog_log_set_budget(shmlog_log_t *log, shmlog_budget_t *budget)
{
    log->budget = budget;
}

int shmlog_budget_charge(shmlog_budget_t *b, uint64_t bytes)
{
    uint64_t cur = shmlog_load_acquire_u64(&b->reserved);
    for (;;) {
        uint64_t limit = shmlog_load_relaxed_u64(&b->limit);
        uint64_t have = cur & SHMLOG_BUDGET_BYTES_MASK;
        if (have + bytes > limit || have + bytes > SHMLOG_BUDGET_BYTES_MASK) {
            shmlog_fetch_add_relaxed_u64(&b->refused, 1);
            shmlog_fetch_add_u32(&b->pressure, 1);
            return -ENOSPC;
        }
        /* the tag's carry out of bit 63 is lost on purpose: it only has to
         * differ from what a recount saw a moment ago */
        uint64_t next = ((cur & ~SHMLOG_BUDGET_BYTES_MASK) + SHMLOG_BUDGET_TAG) | (have + bytes);
        if (shmlog_cas_u64(&b->reserved, &cur, next))
            return 0;
    }
}

void shmlog_budget_credit(shmlog_budget_t *b, uint64_t bytes)
{
    /* never below zero: a recount may have dropped what this credits */
    uint64_t cur = shmlog_load_acquire_u64(&b->reserved);
    for (;;) {
        uint64_t have = cur & SHMLOG_BUDGET_BYTES_MASK;
        uint64_t next = ((cur & ~SHMLOG_BUDGET_BYTES_MASK) + SHMLOG_BUDGET_TAG) |
                        (have > bytes ? have - bytes : 0);
        if (shmlog_cas_u64(&b->reserved, &cur, next))
            return;
    }
}

uint64_t shmlog_budget_snapshot(shmlog_budget_t *b)
{
    return shmlog_load_acquire_u64(&b->reserved);
}

int shmlog_budget_recount(shmlog_budget_t *b, uint64_t snapshot, uint64_t bytes)
{
    if (bytes > SHMLOG_BUDGET_BYTES_MASK)
        return -EINVAL;
    uint64_t next = ((snapshot & ~SHMLOG_BUDGET_BYTES_MASK) + SHMLOG_BUDGET_TAG) | bytes;
    return shmlog_cas_u64(&b->reserved, &snapshot, next) ? 0 : -EAGAIN;
}

uint64_t shmlog_log_reserved_bytes(shmlog_log_t *log)
{
    /* A chunk counts if its pages are reserved, and also while it is
     * OPENING or RELEASING: an opener charges the account before it clears
     * `released`, a releaser sets `released` before it credits, so a chunk
     * in either step may be counted by the account already. Counting it
     * keeps a recount high, never low; once the step ends (or the reaper
     * repairs a dead one's chunk to FREE) the next recount is exact. */
    uint64_t n = log->header_bytes;
    for (uint32_t i = 0; i < log->chunk_count; i++) {
        shmlog_chunk_t *d = &log->hdr->chunks[i];
        uint32_t s = STATE_OF(shmlog_load_acquire_u64(&d->state));
        if (!shmlog_load_acquire_u64(&d->released) || s == SHMLOG_CHUNK_OPENING ||
            s == SHMLOG_CHUNK_RELEASING)
            n += log->chunk_bytes;
    }
    return n;
}

/* log_internal.h: help the full chunk `seq` rotate, or wait for space */
int shmlog_chunk_wait_rotation(shmlog_log_t *log, uint64_t seq, uint64_t deadline)
{
    shmlog_part_hdr_t *h = log->hdr;
    unsigned spins = 0;
    for (;;) {
        if (shmlog_load_acquire_u64(&h->active_seq) != seq)
            return 0;
        int rc = try_rotate(log, seq);
        if (rc != -EAGAIN)
            return rc;
        /* help free the next chunk; one that is FREE already and still
         * refused is waiting for the budget's account: sleep below */
        if (shmlog_load_acquire_u64(&chunk_of(log, seq)->seal) != SHMLOG_NONE &&
            STATE_OF(shmlog_load_acquire_u64(&chunk_of(log, seq + 1)->state)) != SHMLOG_CHUNK_FREE &&
            reclaim_oldest(log, 1, SHMLOG_NONE) == 0)
            continue;
        if (spins < 64) {
            spins++;
            shmlog_cpu_relax();
            continue;
        }
        uint64_t now = shmlog_now_ns();
        if (now >= deadline)
            return -EAGAIN;
        before_blocking();
        release_orphan(log, seq + 1);
        /* seq_cst increment, then one more look at the chunk: pairs with the
         * fence in wake_space, so either we see the freed space or the
         * waker sees us counted and bumps space_futex */
        shmlog_fetch_add_u32(&h->space_waiters, 1);
        uint32_t v = shmlog_load_acquire_u32(&h->space_futex);
        if (shmlog_load_acquire_u64(&h->active_seq) == seq &&
            (rc = try_rotate(log, seq)) != 0) {
            if (rc != -EAGAIN) {
                shmlog_fetch_sub_u32(&h->space_waiters, 1);
                return rc;
            }
            /* short sleeps: whoever frees space may have died before waking us */
            uint64_t left = deadline - now;
            shmlog_futex_wait(&h->space_futex, v, left < 10000000ull ? left : 10000000ull);
        }
        shmlog_fetch_sub_u32(&h->space_waiters, 1);
    }
}

/* ------------------------------------------------- gauges and progress */

uint64_t shmlog_log_start_offset(shmlog_log_t *log)
{
    return shmlog_load_acquire_u64(&log->hdr->start_offset);
}

uint64_t shmlog_log_claimed_end(shmlog_log_t *log)
{
    uint64_t aseq = shmlog_load_acquire_u64(&log->hdr->active_seq);
    return chunk_claimed_end(chunk_of(log, aseq));
}

uint32_t shmlog_log_chunks_in_use(shmlog_log_t *log)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < log->chunk_count; i++)
        if (STATE_OF(shmlog_load_acquire_u64(&log->hdr->chunks[i].state)) != SHMLOG_CHUNK_FREE)
            n++;
    return n;
}

uint32_t shmlog_log_chunks_held(shmlog_log_t *log)
{
    /* below 0: read only, dead holders are the reaper's business */
    shmlog_part_hdr_t *h = log->hdr;
    uint64_t need = lowest_needed(log, 0);
    uint64_t aseq = shmlog_load_acquire_u64(&h->active_seq);
    uint32_t n = 0;
    for (uint32_t i = 0; i < log->chunk_count; i++) {
        shmlog_chunk_t *d = &h->chunks[i];
        uint32_t s = STATE_OF(shmlog_load_acquire_u64(&d->state));
        uint64_t seal = shmlog_load_acquire_u64(&d->seal);
        /* the active chunk counts even when sealed (full, before rotation) */
        if (s == SHMLOG_CHUNK_ACTIVE || s == SHMLOG_CHUNK_OPENING ||
            (s == SHMLOG_CHUNK_SEALED &&
             (shmlog_load_acquire_u64(&d->seq) == aseq || seal == SHMLOG_NONE ||
              d->base_offset + SHMLOG_TAIL_RECORDS(seal) > need)))
            n++;
    }
    return n;
}

void shmlog_log_set_spilled(shmlog_log_t *log, uint64_t offset)
{
    /* pairs with the acquire-load of spilled_offset in lowest_needed: the
     * spiller copied everything below before it published this */
    shmlog_store_release_u64(&log->hdr->spilled_offset, offset);
    wake_space(log);
}

void shmlog_log_set_durable(shmlog_log_t *log, uint64_t offset)
{
    /* read from the header by clients and tools (a consumer's durable-only
     * reads, metrics); nothing in C waits on it. Release, so a process that
     * sees it also sees the spilled_offset it never passes. */
    shmlog_store_release_u64(&log->hdr->durable_offset, offset);
}
