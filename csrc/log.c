/* log.c — claim/commit, read, rotation, reuse and repair of a partition log.
 *
 * The protocol in brief (DESIGN.md, "A partition in shared memory"):
 *   claim   one fetch-add on the active chunk's packed tail gives a batch its
 *           byte position and its base offset at once;
 *   commit  header and payload, then CRC, then a CAS of the frame word from
 *           CLAIMED to DATA — the release that readers acquire;
 *   seal    the first claimer to overflow a chunk knows its exact final
 *           length and record count, CASes them into the chunk's seal word
 *           and rotates to the next free chunk;
 *   reuse   the oldest sealed chunk is freed once nothing gates it (readers
 *           of memory topics, the spiller of disk topics, pins). It is not
 *           zeroed: frame words carry their chunk's generation (layout.h).
 * Nothing here takes a lock: a process SIGKILLed at any instruction leaves
 * state the reaper can finish or undo (invariant 3).
 */
#include "log.h"

#include <errno.h>
#include <string.h>

#include "atomics.h"
#include "crc32c.h"
#include "futex.h"

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

/* The type a frame word has in chunk `seq`: NONE for anything an earlier
 * generation of the slot left there (layout.h, frame word) */
static inline uint32_t frame_kind(uint64_t w, uint64_t seq)
{
    if ((uint32_t)(w >> 32) != shmlog_frame_tag(seq))
        return SHMLOG_FRAME_NONE;
    uint32_t t = (uint32_t)w & SHMLOG_FRAME_TYPE_MASK;
    return t <= SHMLOG_FRAME_PAD ? t : SHMLOG_FRAME_NONE;
}

uint64_t shmlog_frame_word(uint64_t seq, uint32_t type, uint32_t frame_bytes)
{
    return FRAME_WORD(seq, type, frame_bytes);
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

static inline void wake_space(shmlog_log_t *log)
{
    shmlog_fence_seq_cst();
    if (shmlog_load_relaxed_u32(&log->hdr->space_waiters)) {
        shmlog_fetch_add_u32(&log->hdr->space_futex, 1);
        shmlog_futex_wake(&log->hdr->space_futex, INT32_MAX);
    }
}

static inline void wake_data(shmlog_log_t *log)
{
    /* the caller's CAS on the frame word was seq_cst: it is ordered before
     * this load, which pairs with the waiter's increment in shmlog_log_wait */
    if (shmlog_load_relaxed_u32(&log->hdr->data_waiters)) {
        shmlog_fetch_add_u32(&log->hdr->data_futex, 1);
        shmlog_futex_wake(&log->hdr->data_futex, INT32_MAX);
    }
    if (log->bell_waiters && shmlog_load_relaxed_u32(log->bell_waiters)) {
        shmlog_fetch_add_u32(log->bell_futex, 1);
        shmlog_futex_wake(log->bell_futex, INT32_MAX);
    }
}

/* ------------------------------------------------------------------ setup */

size_t shmlog_log_region_bytes(uint32_t chunk_bytes, uint32_t chunk_count)
{
    return SHMLOG_HEADER_BYTES + (size_t)chunk_bytes * chunk_count;
}

static int check_geometry(uint32_t chunk_bytes, uint32_t chunk_count, uint32_t max_batch_bytes)
{
    if (chunk_count < 2 || chunk_count > SHMLOG_MAX_CHUNKS)
        return -EINVAL;
    if (chunk_bytes < SHMLOG_MIN_CHUNK_BYTES || chunk_bytes > SHMLOG_MAX_CHUNK_BYTES ||
        chunk_bytes % SHMLOG_FRAME_ALIGN)
        return -EINVAL;
    if (max_batch_bytes < 2 * SHMLOG_FRAME_HEADER || max_batch_bytes > chunk_bytes / 2 ||
        max_batch_bytes % SHMLOG_FRAME_ALIGN)
        return -EINVAL;
    /* the packed tail must not wrap: the chunk plus one overflowing batch per
     * producer slot stays below 2^32 (DESIGN.md, "Limits") */
    if ((uint64_t)chunk_bytes + (uint64_t)SHMLOG_MAX_PRODUCERS * max_batch_bytes >= (1ull << 32))
        return -EINVAL;
    return 0;
}

int shmlog_log_format(void *base, size_t len, uint32_t chunk_bytes, uint32_t chunk_count,
                      uint32_t max_batch_bytes, uint32_t flags, uint32_t partition,
                      uint64_t initial_offset, uint32_t pid)
{
    int rc = check_geometry(chunk_bytes, chunk_count, max_batch_bytes);
    if (rc)
        return rc;
    if (!base || len < shmlog_log_region_bytes(chunk_bytes, chunk_count))
        return -EINVAL;
    shmlog_part_hdr_t *h = (shmlog_part_hdr_t *)base;
    memset(h, 0, SHMLOG_HEADER_BYTES);
    h->version = SHMLOG_VERSION;
    h->header_bytes = (uint32_t)SHMLOG_HEADER_BYTES;
    h->region_bytes = shmlog_log_region_bytes(chunk_bytes, chunk_count);
    h->chunk_bytes = chunk_bytes;
    h->chunk_count = chunk_count;
    h->max_batch_bytes = max_batch_bytes;
    h->flags = flags;
    h->partition = partition;
    h->creator_pid = pid;
    h->initial_offset = initial_offset;
    h->start_offset = initial_offset;
    h->spilled_offset = initial_offset;
    h->durable_offset = initial_offset;
    for (uint32_t i = 0; i < SHMLOG_MAX_CHUNKS; i++) {
        h->chunks[i].seal = SHMLOG_NONE;
        h->chunks[i].seq = SHMLOG_NONE;
    }
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        h->producers[i].claim_seq = SHMLOG_NONE;
        h->producers[i].claim_tail = SHMLOG_NONE;
    }
    for (uint32_t i = 0; i < SHMLOG_MAX_READERS; i++) {
        h->readers[i].position = SHMLOG_NONE;
        h->readers[i].pin = SHMLOG_NONE;
    }
    shmlog_chunk_t *c = &h->chunks[0];
    c->seq = 0;
    c->base_offset = initial_offset;
    c->tail = 0;
    c->state = SHMLOG_CHUNK_ACTIVE;
    h->active_seq = 0;
    /* chunk memory is not touched here (that would commit every page of
     * every partition up front): a zero word is NONE in any generation */
    /* magic last: an attacher that sees it sees a formatted header */
    shmlog_store_release_u64((volatile uint64_t *)&h->magic, SHMLOG_MAGIC);
    return 0;
}

int shmlog_log_attach(shmlog_log_t *log, void *base, size_t len, uint32_t pid)
{
    if (!log || !base || len < SHMLOG_HEADER_BYTES)
        return -EINVAL;
    shmlog_part_hdr_t *h = (shmlog_part_hdr_t *)base;
    if (shmlog_load_acquire_u64((volatile uint64_t *)&h->magic) != SHMLOG_MAGIC ||
        h->version != SHMLOG_VERSION || h->header_bytes != SHMLOG_HEADER_BYTES)
        return -EPROTO;
    uint32_t cb = h->chunk_bytes, cc = h->chunk_count, mb = h->max_batch_bytes;
    if (check_geometry(cb, cc, mb) || h->region_bytes != shmlog_log_region_bytes(cb, cc) ||
        len < h->region_bytes)
        return -EPROTO;
    /* geometry is copied once: a later scribble over the header cannot make
     * this process index outside the mapping */
    log->base = base;
    log->len = len;
    log->hdr = h;
    log->chunk_bytes = cb;
    log->chunk_count = cc;
    log->max_batch_bytes = mb;
    log->header_bytes = (uint32_t)SHMLOG_HEADER_BYTES;
    log->pid = pid;
    log->bell_futex = NULL;
    log->bell_waiters = NULL;
    return 0;
}

void shmlog_log_set_bell(shmlog_log_t *log, shmlog_log_t *bell)
{
    log->bell_futex = bell ? &bell->hdr->bell_futex : NULL;
    log->bell_waiters = bell ? &bell->hdr->bell_waiters : NULL;
}

/* ------------------------------------------------------------------ slots */

int shmlog_log_producer_register(shmlog_log_t *log)
{
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        shmlog_producer_slot_t *s = &log->hdr->producers[i];
        uint32_t zero = 0;
        if (shmlog_load_relaxed_u32(&s->pid) == 0 && shmlog_cas_u32(&s->pid, &zero, log->pid)) {
            s->fenced = 0;
            s->claim_tail = SHMLOG_NONE;
            shmlog_store_release_u64(&s->claim_seq, SHMLOG_NONE);
            return (int)i;
        }
    }
    return -ENOSPC;
}

void shmlog_log_producer_release(shmlog_log_t *log, int slot)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_PRODUCERS)
        return;
    shmlog_producer_slot_t *s = &log->hdr->producers[slot];
    s->claim_seq = SHMLOG_NONE;
    s->claim_tail = SHMLOG_NONE;
    shmlog_store_release_u32(&s->pid, 0);
}

int shmlog_log_reader_register(shmlog_log_t *log, uint64_t position, uint32_t gating,
                               uint64_t group_id)
{
    for (uint32_t i = 0; i < SHMLOG_MAX_READERS; i++) {
        shmlog_reader_slot_t *r = &log->hdr->readers[i];
        uint32_t zero = 0;
        if (shmlog_load_relaxed_u32(&r->pid) == 0 && shmlog_cas_u32(&r->pid, &zero, log->pid)) {
            r->gating = gating;
            r->group_id = group_id;
            r->pin = SHMLOG_NONE;
            shmlog_store_release_u64(&r->position, position);
            /* a reclaimer that scanned the slots before we published may be
             * freeing our chunk right now: the reader's seq validation after
             * each copy catches its reuse (see shmlog_log_validate) */
            shmlog_fence_seq_cst();
            return (int)i;
        }
    }
    return -ENOSPC;
}

void shmlog_log_reader_release(shmlog_log_t *log, int slot)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_READERS)
        return;
    shmlog_reader_slot_t *r = &log->hdr->readers[slot];
    shmlog_store_release_u64(&r->position, SHMLOG_NONE);
    shmlog_store_release_u64(&r->pin, SHMLOG_NONE);
    shmlog_store_release_u32(&r->pid, 0);
    wake_space(log);
}

void shmlog_log_reader_set_position(shmlog_log_t *log, int slot, uint64_t position)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_READERS)
        return;
    /* The reader does not free the chunk it finished itself: the producer
     * does when it rotates, which keeps old data replayable until then. */
    shmlog_store_release_u64(&log->hdr->readers[slot].position, position);
    wake_space(log);
}

uint32_t shmlog_log_slot_pids(shmlog_log_t *log, uint32_t *slots, uint32_t *pids)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < SHMLOG_MAX_PRODUCERS; i++) {
        uint32_t pid = shmlog_load_acquire_u32(&log->hdr->producers[i].pid);
        if (pid) {
            slots[k] = i;
            pids[k++] = pid;
        }
    }
    for (uint32_t i = 0; i < SHMLOG_MAX_READERS; i++) {
        uint32_t pid = shmlog_load_acquire_u32(&log->hdr->readers[i].pid);
        if (pid) {
            slots[k] = SHMLOG_MAX_PRODUCERS + i;
            pids[k++] = pid;
        }
    }
    return k;
}

void shmlog_log_reader_set_pin(shmlog_log_t *log, int slot, uint64_t pin)
{
    if (slot < 0 || (uint32_t)slot >= SHMLOG_MAX_READERS)
        return;
    shmlog_store_release_u64(&log->hdr->readers[slot].pin, pin);
    /* pairs with the fence in reclaim_oldest: after this, either the
     * reclaimer sees our pin, or our next validate sees its RECLAIMING */
    shmlog_fence_seq_cst();
    if (pin == SHMLOG_NONE)
        wake_space(log);
}

/* ------------------------------------------------------- seal and rotate */

static void complete_seal_state(shmlog_chunk_t *d)
{
    uint64_t st = shmlog_load_acquire_u64(&d->state);
    if (STATE_OF(st) == SHMLOG_CHUNK_ACTIVE && shmlog_load_acquire_u64(&d->seal) != SHMLOG_NONE) {
        AT_POINT(SHMLOG_POINT_SEAL);
        shmlog_cas_u64(&d->state, &st, STATE_NEXT(st, SHMLOG_CHUNK_SEALED, 0));
    }
}

static void seal_chunk(shmlog_log_t *log, uint64_t seq, uint32_t bytes, uint32_t records)
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

/* 0 if active_seq moved past seq (by us or anyone), -EAGAIN if the next chunk
 * is not free yet */
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
    n->base_offset = d->base_offset + SHMLOG_TAIL_RECORDS(seal);
    n->seal = SHMLOG_NONE;
    shmlog_store_release_u64(&n->tail, 0);
    shmlog_store_release_u64(&n->seq, seq + 1);
    shmlog_store_release_u64(&n->state, STATE_NEXT(opening, SHMLOG_CHUNK_ACTIVE, 0));
    uint64_t expected = seq;
    shmlog_cas_u64(&h->active_seq, &expected, seq + 1);
    __atomic_fetch_add(&h->rotations, 1, __ATOMIC_RELAXED);
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

/* free the oldest chunk if nothing gates it; 0 freed, -EAGAIN not now */
static int reclaim_oldest(shmlog_log_t *log)
{
    shmlog_part_hdr_t *h = log->hdr;
    uint64_t aseq = shmlog_load_acquire_u64(&h->active_seq);
    uint64_t oseq = aseq + 1; /* the slot after the active one holds the oldest */
    shmlog_chunk_t *n = chunk_of(log, oseq);
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
    if (chunk_gated(log, end))
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
        shmlog_store_release_u64(&n->state, STATE_NEXT(reclaiming, SHMLOG_CHUNK_SEALED, 0));
        return -EAGAIN;
    }
    /* No zeroing: the next generation's frame words carry its own tag, so
     * what this one leaves behind reads as "not yet" (layout.h). Zeroing
     * 16 MiB cost a third of a producer's time with 64 KiB records. */
    uint64_t cur = shmlog_load_acquire_u64(&h->start_offset);
    while (cur < end && !shmlog_cas_u64(&h->start_offset, &cur, end))
        ;
    shmlog_store_release_u64(&n->tail, 0);
    __atomic_fetch_add(&h->reclaimed_chunks, 1, __ATOMIC_RELAXED);
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
        if (reclaim_oldest(log) != 0)
            break;
        freed++;
    }
    if (freed)
        wake_space(log);
    return freed;
}

/* The active chunk `seq` is full: help it rotate, or wait for space. */
static int wait_rotation(shmlog_log_t *log, uint64_t seq, uint64_t deadline)
{
    shmlog_part_hdr_t *h = log->hdr;
    unsigned spins = 0;
    for (;;) {
        if (shmlog_load_acquire_u64(&h->active_seq) != seq)
            return 0;
        if (try_rotate(log, seq) == 0)
            return 0;
        if (shmlog_load_acquire_u64(&chunk_of(log, seq)->seal) != SHMLOG_NONE &&
            reclaim_oldest(log) == 0)
            continue;
        if (spins < 64) {
            spins++;
            shmlog_cpu_relax();
            continue;
        }
        uint64_t now = shmlog_now_ns();
        if (now >= deadline)
            return -EAGAIN;
        shmlog_fetch_add_u32(&h->space_waiters, 1);
        uint32_t v = shmlog_load_acquire_u32(&h->space_futex);
        if (shmlog_load_acquire_u64(&h->active_seq) == seq && try_rotate(log, seq) != 0) {
            /* short sleeps: whoever frees space may have died before waking us */
            uint64_t left = deadline - now;
            shmlog_futex_wait(&h->space_futex, v, left < 10000000ull ? left : 10000000ull);
        }
        shmlog_fetch_sub_u32(&h->space_waiters, 1);
    }
}

/* ------------------------------------------------------------ claim/commit */

static int pad_frame(shmlog_log_t *log, uint64_t seq, uint32_t pos, uint64_t expected,
                     uint32_t fl);

static void clear_claim(shmlog_producer_slot_t *ps)
{
    shmlog_store_release_u64(&ps->claim_seq, SHMLOG_NONE);
    shmlog_store_relaxed_u64(&ps->claim_tail, SHMLOG_NONE);
}

/* Claim fb bytes and `records` offsets. On success the slot describes the
 * claim and the frame word holds CLAIMED|fb. */
static int claim(shmlog_log_t *log, int slot, uint32_t fb, uint32_t records, uint64_t deadline,
                 uint64_t *seq_out, uint32_t *pos_out, uint64_t *base_out)
{
    shmlog_part_hdr_t *h = log->hdr;
    shmlog_producer_slot_t *ps = &h->producers[slot];
    const uint32_t cap = log->chunk_bytes;
    for (;;) {
        uint64_t seq = shmlog_load_acquire_u64(&h->active_seq);
        shmlog_chunk_t *d = chunk_of(log, seq);
        uint64_t t = shmlog_load_relaxed_u64(&d->tail);
        int rc;
        if (SHMLOG_TAIL_BYTES(t) > cap) {
            /* known full: do not add, so the tail cannot wrap (DESIGN, Limits) */
            if ((rc = wait_rotation(log, seq, deadline)) < 0)
                return rc;
            continue;
        }
        ps->claim_bytes = fb;
        ps->claim_records = records;
        shmlog_store_relaxed_u32(&ps->claim_stamped, 0);
        shmlog_store_relaxed_u32(&ps->fenced, 0);
        shmlog_store_relaxed_u64(&ps->claim_tail, SHMLOG_NONE);
        shmlog_store_release_u64(&ps->claim_seq, seq);
        shmlog_fence_seq_cst(); /* pairs with the fence in reclaim_oldest */
        uint64_t st = shmlog_load_acquire_u64(&d->state);
        if (shmlog_load_acquire_u64(&d->seq) != seq || STATE_OF(st) != SHMLOG_CHUNK_ACTIVE ||
            shmlog_load_acquire_u64(&d->seal) != SHMLOG_NONE) {
            clear_claim(ps);
            if ((rc = wait_rotation(log, seq, deadline)) < 0)
                return rc;
            continue;
        }
        uint64_t prev = shmlog_fetch_add_u64(&d->tail, SHMLOG_TAIL_PACK(fb, records));
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
                pad_frame(log, seq, pb, w, fb);
                clear_claim(ps);
                continue;
            }
            /* after the CAS: a reader that sees this and a pad at pb knows
             * the pad is a reaper's, not stale bytes (stale_word) */
            shmlog_store_release_u32(&ps->claim_stamped, 1);
            *seq_out = seq;
            *pos_out = pb;
            *base_out = d->base_offset + SHMLOG_TAIL_RECORDS(prev);
            return 0;
        }
        if (pb <= cap) /* first overflower: it alone knows the exact final tail */
            seal_chunk(log, seq, pb, SHMLOG_TAIL_RECORDS(prev));
        clear_claim(ps);
        if ((rc = wait_rotation(log, seq, deadline)) < 0)
            return rc;
    }
}

/* CRC of a frame: header bytes [12, 64) then the payload */
static inline uint32_t frame_crc(const shmlog_frame_hdr_t *f)
{
    uint32_t c = shmlog_crc32c(0, (const uint8_t *)f + 12, SHMLOG_FRAME_HEADER - 12);
    return shmlog_crc32c(c, (const uint8_t *)f + SHMLOG_FRAME_HEADER, f->payload_bytes);
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
            pad_frame(log, seq, pos, FRAME_WORD(seq, SHMLOG_FRAME_CLAIMED, fb), fb);
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
    return shmlog_batch_encode((const shmlog_batch_in_t *)src, dst, len) == (int64_t)len ? 0
                                                                                         : -EPROTO;
}

int shmlog_log_append(shmlog_log_t *log, int slot, const shmlog_batch_in_t *in,
                      uint64_t timeout_ns, uint64_t *base_offset)
{
    int64_t section = shmlog_batch_encoded_size(in);
    if (section < 0)
        return (int)section;
    frame_src_t m = {.payload_bytes = (uint32_t)section, .record_count = in->count,
                     .attributes = in->attributes, .uncompressed_bytes = (uint32_t)section,
                     .producer_id = in->producer_id, .producer_seq = in->producer_seq,
                     .write = write_batch, .src = in};
    shmlog_batch_timestamps(in, &m.first_timestamp, &m.max_timestamp);
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
    return shmlog_pickled_encode(p->stream, p->len, dst, len) == (int64_t)len ? 0 : -EPROTO;
}

int64_t shmlog_log_append_pickled(shmlog_log_t *log, int slot, const uint8_t *stream,
                                  size_t stream_len, int32_t max_value, int64_t timestamp,
                                  uint64_t producer_id, uint32_t producer_seq,
                                  uint64_t timeout_ns)
{
    uint32_t count;
    int64_t section = shmlog_pickled_section_size(stream, stream_len, max_value, &count);
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

/* ------------------------------------------------------------------ read */

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
        int64_t got = shmlog_records_decode((const uint8_t *)f + SHMLOG_FRAME_HEADER,
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

int64_t shmlog_log_read_pickled(shmlog_log_t *log, shmlog_cursor_t *c,
                                shmlog_records_out_t *out, uint32_t max_records,
                                uint64_t max_bytes, uint32_t small_below,
                                shmlog_read_info_t *info, uint8_t *dst, size_t cap,
                                uint32_t read_flags)
{
    out->capacity = max_records;
    int n = shmlog_log_read(log, c, out, max_bytes, info);
    if (n < 0)
        return n;
    info->records = (uint32_t)n;
    if (n == 0)
        return info->frame_pos ? SHMLOG_READ_FRAME : 0;
    /* large values are sliced straight out of the mapping (one copy, no
     * pickle framing); header lists are decoded in Python */
    if ((out->flags & SHMLOG_REC_HEADERS) || info->bytes >= (uint64_t)n * small_below)
        return SHMLOG_READ_COLUMNS;
    if (n == 1 && (read_flags & SHMLOG_READ_ONE_OK) && out->flags == 0 &&
        (size_t)out->value_lens[0] <= cap) {
        /* a paced consumer's message: the value and two numbers, no pickle
         * to build or to load (~1 us of Python per message) */
        memcpy(dst, log->base + out->value_pos[0], (size_t)out->value_lens[0]);
        info->one_len = (uint32_t)out->value_lens[0];
        info->one_offset = out->offsets[0];
        info->one_timestamp = out->timestamps[0];
        int rc = shmlog_log_validate_read(log, c, info);
        return rc < 0 ? rc : SHMLOG_READ_ONE;
    }
    int64_t k = shmlog_result_pickle(log->base, out, (uint32_t)n, info->first_seq, info->bytes,
                                     dst, cap);
    if (k < 0)
        return SHMLOG_READ_COLUMNS;
    int rc = shmlog_log_validate_read(log, c, info);
    return rc < 0 ? rc : k;
}

int64_t shmlog_log_poll_pickled(shmlog_log_t *log, shmlog_cursor_t *c,
                                shmlog_records_out_t *out, uint32_t max_records,
                                uint64_t max_bytes, uint32_t small_below,
                                shmlog_read_info_t *info, uint8_t *dst, size_t cap,
                                int reader_slot, uint64_t spin_ns, uint64_t timeout_ns,
                                uint32_t read_flags)
{
    int64_t k = shmlog_log_read_pickled(log, c, out, max_records, max_bytes, small_below, info,
                                        dst, cap, read_flags);
    if (k == 0 && timeout_ns && shmlog_log_wait(log, c, spin_ns, timeout_ns))
        k = shmlog_log_read_pickled(log, c, out, max_records, max_bytes, small_below, info, dst,
                                    cap, read_flags);
    if ((k > 0 || k == SHMLOG_READ_ONE) && reader_slot >= 0)
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
     * reclaimer flips the state to RECLAIMING before anyone may reuse it */
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

int shmlog_log_wait(shmlog_log_t *log, const shmlog_cursor_t *cursor, uint64_t spin_ns,
                    uint64_t timeout_ns)
{
    shmlog_part_hdr_t *h = log->hdr;
    if (data_ready(log, cursor))
        return 1;
    uint64_t start = shmlog_now_ns();
    uint64_t deadline = start + timeout_ns;
    int ready = 0;
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
                shmlog_fetch_sub_u32(&h->data_hungry, 1);
                return 1;
            }
            if ((i & 15) == 15 && shmlog_now_ns() - start >= spin_ns)
                break;
        }
    }
    /* seq_cst RMW: ordered before the data_ready checks below, paired with
     * the committer's CAS on the frame word before it loads data_waiters */
    shmlog_fetch_add_u32(&h->data_waiters, 1);
    for (;;) {
        uint32_t v = shmlog_load_acquire_u32(&h->data_futex);
        shmlog_fence_seq_cst(); /* pairs with the committer's CAS before wake_data */
        if (data_ready(log, cursor)) {
            ready = 1;
            break;
        }
        uint64_t now = shmlog_now_ns();
        if (now >= deadline)
            break;
        uint64_t left = deadline - now;
        /* bounded sleeps: a committer that died between CAS and wake costs us
         * at most this much */
        shmlog_futex_wait(&h->data_futex, v, left < 100000000ull ? left : 100000000ull);
    }
    shmlog_fetch_sub_u32(&h->data_waiters, 1);
    shmlog_fetch_sub_u32(&h->data_hungry, 1);
    return ready;
}

static int any_ready(shmlog_log_t **logs, shmlog_cursor_t **cursors, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (data_ready(logs[i], cursors[i]))
            return (int)i;
    return -1;
}

int shmlog_log_wait_any(shmlog_log_t **logs, shmlog_cursor_t **cursors, uint32_t n,
                        shmlog_log_t *bell, uint64_t spin_ns, uint64_t timeout_ns)
{
    int r = any_ready(logs, cursors, n);
    if (r >= 0 || n == 0)
        return r;
    if (n == 1 && !bell)
        return shmlog_log_wait(logs[0], cursors[0], spin_ns, timeout_ns) ? 0 : -1;
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
        uint32_t v = shmlog_load_acquire_u32(fw);
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

/* end offset of a chunk as far as claims go (holes included) */
static uint64_t chunk_claimed_end(shmlog_chunk_t *d)
{
    uint64_t seal = shmlog_load_acquire_u64(&d->seal);
    if (seal != SHMLOG_NONE)
        return d->base_offset + SHMLOG_TAIL_RECORDS(seal);
    return d->base_offset + SHMLOG_TAIL_RECORDS(shmlog_load_acquire_u64(&d->tail));
}

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
    shmlog_store_release_u64(&log->hdr->spilled_offset, offset);
    wake_space(log);
}

void shmlog_log_set_durable(shmlog_log_t *log, uint64_t offset)
{
    shmlog_store_release_u64(&log->hdr->durable_offset, offset);
}

/* ---------------------------------------------------------------- reaper */

static int pad_frame(shmlog_log_t *log, uint64_t seq, uint32_t pos, uint64_t expected, uint32_t fl)
{
    shmlog_frame_hdr_t *f = frame_at(log, seq, pos);
    if (!shmlog_cas_u64(&f->frame, &expected, FRAME_WORD(seq, SHMLOG_FRAME_PAD, fl)))
        return 0;
    __atomic_fetch_add(&log->hdr->aborted_batches, 1, __ATOMIC_RELAXED);
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
        return pad_frame(log, seq, pos, w, fl);
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
    return pad_frame(log, seq, pos, w, end - pos);
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
    seal_chunk(log, seq, log->chunk_bytes, SHMLOG_TAIL_RECORDS(t));
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
                aborted = pad_frame(log, seq, pb, w, fb);
            }
        } else if (pb <= log->chunk_bytes) {
            seal_chunk(log, seq, pb, SHMLOG_TAIL_RECORDS(ct));
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
    shmlog_reader_slot_t *r = &log->hdr->readers[slot];
    shmlog_store_release_u64(&r->position, SHMLOG_NONE);
    shmlog_store_release_u64(&r->pin, SHMLOG_NONE);
    shmlog_store_release_u32(&r->pid, 0);
    wake_space(log);
    return 0;
}

int shmlog_log_repair_chunks(shmlog_log_t *log, uint32_t dead_pid)
{
    int repaired = 0;
    for (uint32_t i = 0; i < log->chunk_count; i++) {
        shmlog_chunk_t *d = &log->hdr->chunks[i];
        uint64_t st = shmlog_load_acquire_u64(&d->state);
        uint32_t s = STATE_OF(st), owner = OWNER_OF(st);
        if ((s != SHMLOG_CHUNK_RECLAIMING && s != SHMLOG_CHUNK_OPENING) || owner != dead_pid)
            continue;
        /* Both are redone from scratch. A reclaim goes back to SEALED, not on
         * to FREE: it may have died before it checked claims and pins, and
         * its data is intact (only state words moved; a chunk is not
         * zeroed). An opening that never published is as if it never began. */
        uint64_t to = STATE_NEXT(st, SHMLOG_CHUNK_SEALED, 0);
        if (s == SHMLOG_CHUNK_OPENING) {
            shmlog_store_release_u64(&d->tail, 0);
            to = STATE_NEXT(st, SHMLOG_CHUNK_FREE, 0);
        }
        if (shmlog_cas_u64(&d->state, &st, to))
            repaired++;
    }
    if (repaired)
        wake_space(log);
    return repaired;
}

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
