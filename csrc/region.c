/* region.c — a partition region's setup and its slots: format, attach, the
 * topic doorbell, and the producer and reader slots that tell the rest of
 * the log (and the reaper) who is inside.
 *
 * The core works on memory it is handed: it never maps, allocates or
 * unlinks (log.h).
 */
#include <errno.h>
#include <string.h>

#include "log_internal.h"

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
    /* a frame may fill a whole chunk (a topic's largest message, alone in
     * its batch): a claim that overflows rotates, and an empty chunk takes
     * any frame up to its size, so no claim waits for ever */
    if (max_batch_bytes < 2 * SHMLOG_FRAME_HEADER || max_batch_bytes > chunk_bytes ||
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
    /* Only the first chunk's pages are reserved with the region (the
     * creator allocates header + chunk 0): the others are reserved when a
     * rotation first opens them (try_rotate), so a partition that never
     * fills its first chunk never holds the rest of its ring */
    for (uint32_t i = 1; i < chunk_count; i++)
        h->chunks[i].released = 1;
    shmlog_chunk_t *c = &h->chunks[0];
    c->seq = 0;
    c->base_offset = initial_offset;
    c->tail = 0;
    c->state = SHMLOG_CHUNK_ACTIVE;
    h->active_seq = 0;
    /* chunk memory is not touched here (that would commit every page of
     * every partition up front): a zero word is NONE in any generation */
    /* magic last: pairs with the acquire-load of magic in
     * shmlog_log_attach, so an attacher that sees it sees a formatted header */
    shmlog_store_release_u64((volatile uint64_t *)&h->magic, SHMLOG_MAGIC);
    return 0;
}

int shmlog_log_attach(shmlog_log_t *log, void *base, size_t len, uint32_t pid)
{
    if (!log || !base || len < SHMLOG_HEADER_BYTES)
        return -EINVAL;
    shmlog_part_hdr_t *h = (shmlog_part_hdr_t *)base;
    /* pairs with the release of magic at the end of shmlog_log_format */
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
    log->budget = NULL;
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
            /* pairs with the acquire-loads of claim_seq that find claims
             * (see clear_claim): the slot is known to hold none */
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
    clear_claim(s);
    /* pid last: pairs with the acquire-loads of pid in shmlog_log_slot_pids
     * and claimers_inside; the next owner's CAS on pid sees the slot clear */
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
            /* pairs with the acquire-load of position in lowest_needed
             * (chunk.c), which then sees gating and pin set for this reader */
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
    /* position and pin first, pid last: each pairs with its acquire-load in
     * lowest_needed and pinned_below (chunk.c); a reclaimer that still sees
     * the pid sees at most positions that gate nothing */
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
     * does when it rotates, which keeps old data replayable until then.
     * Pairs with the acquire-load of position in lowest_needed (chunk.c). */
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
    /* pairs with the acquire-loads of pin in lowest_needed and pinned_below */
    shmlog_store_release_u64(&log->hdr->readers[slot].pin, pin);
    /* pairs with the fence in reclaim_oldest: after this, either the
     * reclaimer sees our pin, or our next validate sees its RECLAIMING */
    shmlog_fence_seq_cst();
    if (pin == SHMLOG_NONE)
        wake_space(log);
}

/* the word a frame of chunk `seq` carries (layout.h): for tools and tests */
uint64_t shmlog_frame_word(uint64_t seq, uint32_t type, uint32_t frame_bytes)
{
    return FRAME_WORD(seq, type, frame_bytes);
}
