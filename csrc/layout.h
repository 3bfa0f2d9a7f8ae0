/* layout.h — every struct that lives in a partition's shared-memory region.
 *
 * A region is: one header (geometry, hot words each on their own 128 bytes,
 * the chunk table, producer slots, reader slots), then chunk_count chunks of
 * chunk_bytes each, filled with frames one after another.
 *
 * Words: a *batch* is what a producer commits and a consumer reads
 * (DESIGN.md, "Batch": a header, then the record section; Python and the
 * docs say batch too). A *frame* is the span of a chunk that one claim
 * takes: 64-byte aligned, it starts with the 64-bit frame word (below),
 * then the rest of the batch header (shmlog_frame_hdr_t), the record
 * section and zero slack up to the alignment. A DATA frame holds exactly
 * one batch; a CLAIMED frame's batch is still being written; a PAD frame
 * holds none (an aborted claim, or dead space). Frames, not batches, are
 * what the log walks, pads and copies unchanged into segment files.
 *
 * Nothing here may hold a pointer: the region is mapped at different
 * addresses in different processes. Python re-checks every offset through
 * ffi.offsetof (tests/core/test_layout.py), so C and Python can never drift.
 */
#ifndef SHMLOG_LAYOUT_H
#define SHMLOG_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define SHMLOG_MAGIC            0x31474F4C4D485300ULL /* "\0SHMLOG1" little-endian */
#define SHMLOG_VERSION          3u  /* 2: generation-tagged frame words; 3: counted chunk states */
#define SHMLOG_MAX_CHUNKS       64u
#define SHMLOG_MAX_PRODUCERS    64u
#define SHMLOG_MAX_READERS      64u
#define SHMLOG_FRAME_ALIGN      64u
#define SHMLOG_FRAME_HEADER     64u
#define SHMLOG_MIN_CHUNK_BYTES  4096u
#define SHMLOG_MAX_CHUNK_BYTES  (1u << 30)
#define SHMLOG_NONE             UINT64_MAX

/* header flags: what gates the reuse of a chunk */
#define SHMLOG_F_GATE_READERS   1u  /* memory topic: every registered reader must have passed it */
#define SHMLOG_F_GATE_SPILL     2u  /* disk topic: the spiller must have copied it */
#define SHMLOG_F_CLOSED         4u  /* topic deleted: clients detach */

/* chunk states: the low 8 bits of shmlog_chunk_t.state. Bits 8-31 count the
 * slot's transitions (so a CAS from a word loaded before a stall fails once
 * the slot went round the ring, instead of acting on its next generation);
 * the high 32 bits hold the pid of the process that holds a RECLAIMING or
 * OPENING chunk, so a reaper can repair a chunk whose owner died
 * mid-rotation or mid-reclaim */
#define SHMLOG_CHUNK_FREE       0u
#define SHMLOG_CHUNK_ACTIVE     1u
#define SHMLOG_CHUNK_SEALED     2u
#define SHMLOG_CHUNK_RECLAIMING 3u  /* being zeroed for reuse */
#define SHMLOG_CHUNK_OPENING    4u  /* being initialised as the next active chunk */
#define SHMLOG_CHUNK_RELEASING  5u  /* a FREE chunk whose pages are being given back */

/* frame word in shared memory: (tag << 32) | frame_bytes | type, where
 * tag = shmlog_frame_tag(chunk seq) and type sits in the low bits that a
 * 64-byte-aligned frame_bytes leaves free. A chunk is not zeroed when it is
 * reused: whatever an earlier generation left at a position (a frame word,
 * payload bytes) carries another tag, and reads as NONE. Every transition
 * is a CAS:
 *   stale -> CLAIMED (producer, right after its fetch-add: the hole has a size)
 *   CLAIMED -> DATA (producer commit: the release that readers acquire)
 *   stale or CLAIMED -> PAD (reaper abort; readers skip it)
 * A reader treats stale and CLAIMED as "not yet". */
#define SHMLOG_FRAME_NONE       0u
#define SHMLOG_FRAME_CLAIMED    1u
#define SHMLOG_FRAME_DATA       2u
#define SHMLOG_FRAME_PAD        3u   /* aborted claim or dead space */
#define SHMLOG_FRAME_TYPE_MASK  (SHMLOG_FRAME_ALIGN - 1u)
/* a frame in a segment file has no generation: its word is (this << 32) | frame_bytes */
#define SHMLOG_DISK_FRAME_DATA  0x4441u  /* "DA" */

/* Odd multiplier: a bijection on seq mod 2^32, so no two generations of a
 * chunk slot within 2^32 rotations share a tag, and tags do not look like
 * the small integers payloads are full of. */
static inline uint32_t shmlog_frame_tag(uint64_t seq)
{
    return (uint32_t)seq * 0x9E3779B1u;
}

/* batch attributes (shmlog_frame_hdr_t.attributes) */
#define SHMLOG_ATTR_COMPRESSION_MASK 0x7u
#define SHMLOG_ATTR_LZ4              0x1u
#define SHMLOG_BATCH_VERSION         1u

#define SHMLOG_TAIL_BYTES(t)    ((uint32_t)((t) >> 32))
#define SHMLOG_TAIL_RECORDS(t)  ((uint32_t)((t) & 0xffffffffu))
#define SHMLOG_TAIL_PACK(b, r)  (((uint64_t)(b) << 32) | (uint64_t)(r))

/* One chunk descriptor. The claim word (tail) is alone on its 128 bytes:
 * every producer hammers it, nothing else may share its cache lines. */
typedef struct {
    volatile uint64_t tail;           /* (bytes << 32) | records claimed in this chunk */
    uint8_t _pad0[120];
    volatile uint64_t seq;            /* which chunk sequence number the slot holds */
    volatile uint64_t base_offset;    /* offset of the chunk's first record */
    volatile uint64_t state;          /* owner_pid << 32 | transitions << 8 | SHMLOG_CHUNK_* */
    volatile uint64_t seal;           /* TAIL_PACK(final bytes, final records) or SHMLOG_NONE;
                                       * set by one CAS, so a reaper's seal and a slow
                                       * overflower's seal can never mix */
    volatile uint64_t released;       /* 1: the chunk's pages were (or may have been) given
                                       * back to the tmpfs (shmlog_log_release): whoever
                                       * opens it reserves them again first. 0 in regions
                                       * of older versions, whose chunks are all reserved */
    uint8_t _pad1[88];
} shmlog_chunk_t;

/* A producer's slot: its in-flight claim, written before and after the
 * fetch-add so the reaper can abort it exactly if the process dies. */
typedef struct {
    volatile uint32_t pid;            /* 0 = free slot */
    volatile uint32_t fenced;         /* a reaper is padding over this claim: give it up */
    volatile uint64_t claim_seq;      /* chunk seq of the in-flight claim, SHMLOG_NONE if none */
    volatile uint64_t claim_tail;     /* tail value the fetch-add returned, SHMLOG_NONE until known */
    volatile uint32_t claim_bytes;    /* frame bytes asked for */
    volatile uint32_t claim_records;  /* records asked for */
    volatile uint64_t batches;        /* committed batches (stats) */
    volatile uint64_t records;        /* committed records (stats) */
    volatile uint64_t aborted;        /* batches of this slot the reaper aborted */
    volatile uint32_t claim_stamped;  /* the claim's frame word is written (CLAIMED) */
    uint8_t _pad[68];
} shmlog_producer_slot_t;

/* A reader's slot: where it is, so memory topics never overwrite unread data,
 * and what it pins, so a zero-copy view is never recycled under it. */
typedef struct {
    volatile uint32_t pid;            /* 0 = free slot */
    volatile uint32_t gating;         /* 1 = this reader's position gates chunk reuse */
    volatile uint64_t position;       /* next offset it will consume */
    volatile uint64_t pin;            /* lowest offset it may still be reading in place, or NONE */
    volatile uint64_t group_id;       /* caller-defined tag (group hash), 0 = none */
    uint8_t _pad[96];
} shmlog_reader_slot_t;

typedef struct {
    /* 0: geometry, written once at format time, validated at attach */
    uint64_t magic;
    uint32_t version;
    uint32_t header_bytes;
    uint64_t region_bytes;
    uint32_t chunk_bytes;
    uint32_t chunk_count;
    uint32_t max_batch_bytes;
    volatile uint32_t flags;
    uint32_t partition;
    uint32_t creator_pid;
    uint64_t initial_offset;
    uint8_t _pad0[72];
    /* 128: the active chunk's sequence number (index = seq % chunk_count) */
    volatile uint64_t active_seq;
    uint8_t _pad1[120];
    /* 256: consumers that caught up sleep on data_futex. The topic's
     * doorbell lives on the same line (used in partition 0's region only):
     * a consumer of several partitions sleeps there, and committers, which
     * read data_waiters anyway, ring it when bell_waiters says someone sleeps.
     * *_waiters count sleepers only (a committer's futex wake is a syscall,
     * wasted on a reader that spins); *_hungry count every reader that
     * waits, spinning or asleep: producers read them to commit at once
     * instead of batching on */
    volatile uint32_t data_futex;
    volatile uint32_t data_waiters;
    volatile uint32_t bell_futex;
    volatile uint32_t bell_waiters;
    volatile uint32_t data_hungry;
    volatile uint32_t bell_hungry;
    uint8_t _pad2[104];
    /* 384: producers that found no free chunk sleep on space_futex */
    volatile uint32_t space_futex;
    volatile uint32_t space_waiters;
    uint8_t _pad3[120];
    /* 512: progress published by the reclaimer and the supervisor */
    volatile uint64_t start_offset;     /* lowest offset still in shared memory */
    volatile uint64_t spilled_offset;   /* everything below is in segment files */
    volatile uint64_t durable_offset;   /* everything below is fsynced */
    volatile uint64_t supervisor_pid;
    volatile uint64_t aborted_batches;  /* claims the reaper turned into holes */
    volatile uint64_t reclaimed_chunks;
    volatile uint64_t rotations;
    uint8_t _pad4[72];
    /* 640 */
    shmlog_chunk_t chunks[SHMLOG_MAX_CHUNKS];
    shmlog_producer_slot_t producers[SHMLOG_MAX_PRODUCERS];
    shmlog_reader_slot_t readers[SHMLOG_MAX_READERS];
} shmlog_part_hdr_t;

/* The 64-byte header at the start of every frame: the frame word, then the
 * batch header (DESIGN.md, "Batch"). */
typedef struct {
    volatile uint64_t frame;          /* frame word: (tag << 32) | frame_bytes | type
                                       * in shm, (SHMLOG_DISK_FRAME_DATA << 32) |
                                       * frame_bytes in a segment file; see above */
    uint32_t crc;                     /* CRC32C of bytes [12, 64) of this header + payload */
    uint32_t payload_bytes;           /* record section (compressed if lz4) */
    uint64_t base_offset;
    uint32_t record_count;
    uint16_t attributes;
    uint16_t batch_version;
    int64_t first_timestamp;
    int64_t max_timestamp;
    uint64_t producer_id;
    uint32_t producer_seq;
    uint32_t uncompressed_bytes;      /* record section size before lz4 */
} shmlog_frame_hdr_t;

_Static_assert(offsetof(shmlog_part_hdr_t, active_seq) == 128, "active_seq moved");
_Static_assert(offsetof(shmlog_part_hdr_t, data_futex) == 256, "data_futex moved");
_Static_assert(offsetof(shmlog_part_hdr_t, bell_waiters) == 268, "bell_waiters moved");
_Static_assert(offsetof(shmlog_part_hdr_t, data_hungry) == 272, "data_hungry moved");
_Static_assert(offsetof(shmlog_part_hdr_t, bell_hungry) == 276, "bell_hungry moved");
_Static_assert(offsetof(shmlog_part_hdr_t, space_futex) == 384, "space_futex moved");
_Static_assert(offsetof(shmlog_part_hdr_t, start_offset) == 512, "start_offset moved");
_Static_assert(offsetof(shmlog_part_hdr_t, chunks) == 640, "chunks moved");
_Static_assert(sizeof(shmlog_chunk_t) == 256, "chunk descriptor size");
_Static_assert(offsetof(shmlog_chunk_t, seq) == 128, "chunk seq moved");
_Static_assert(offsetof(shmlog_chunk_t, released) == 160, "chunk released moved");
_Static_assert(sizeof(shmlog_producer_slot_t) == 128, "producer slot size");
_Static_assert(offsetof(shmlog_producer_slot_t, claim_stamped) == 56, "claim_stamped moved");
_Static_assert(sizeof(shmlog_reader_slot_t) == 128, "reader slot size");
_Static_assert(offsetof(shmlog_part_hdr_t, producers) == 640 + 64 * 256, "producers moved");
_Static_assert(offsetof(shmlog_part_hdr_t, readers) == 640 + 64 * 256 + 64 * 128, "readers moved");
_Static_assert(sizeof(shmlog_part_hdr_t) == 640 + 64 * 256 + 128 * 128, "header size");
_Static_assert(sizeof(shmlog_frame_hdr_t) == SHMLOG_FRAME_HEADER, "frame header size");
_Static_assert(offsetof(shmlog_frame_hdr_t, crc) == 8, "frame crc moved");
_Static_assert(offsetof(shmlog_frame_hdr_t, base_offset) == 16, "frame base_offset moved");
_Static_assert(offsetof(shmlog_frame_hdr_t, first_timestamp) == 32, "frame timestamp moved");

/* The data dir's shared-memory account: one small region per data dir
 * (shmlog.broker.shm_budget names it), mapped by the supervisor and every
 * client. `reserved` counts the bytes of partition regions whose pages are
 * allocated: the supervisor charges a region when it creates one and
 * credits it when it removes one; a rotation that opens a released chunk
 * charges chunk_bytes before it reserves the pages, and the release that
 * gives them back credits them. A charge that would pass `limit` is
 * refused: the rotation waits as for a busy chunk (BufferFull at its
 * timeout) and bumps `pressure`, which the supervisor's release pass
 * answers by freeing spilled, read chunks of busy partitions too. Charges
 * happen only when a chunk opens, never per claim or commit. A process
 * killed between a charge and its credit leaves the count high, never
 * low: the bound can only get stricter until the supervisor recounts. */
#define SHMLOG_BUDGET_MAGIC     0x31544742474F4C53ULL /* "SLOGBGT1" little-endian */
typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t _pad0;
    volatile uint64_t limit;          /* bytes `reserved` may not pass (shm_budget_bytes) */
    uint8_t _pad1[104];
    /* 128: charged by rotating producers */
    /* bytes of region pages allocated (counted as above) in the low 48
     * bits; the high 16 are a tag every charge, credit and recount bumps,
     * so a recount's compare-and-swap fails if anything moved the count
     * while it looked at the regions (shmlog_budget_recount) */
    volatile uint64_t reserved;
    volatile uint64_t refused;        /* charges refused (stats) */
    volatile uint32_t pressure;       /* bumped by a refused charge: release more */
    uint8_t _pad2[108];
} shmlog_budget_t;

#define SHMLOG_BUDGET_BYTES_MASK ((1ull << 48) - 1)
#define SHMLOG_BUDGET_TAG        (1ull << 48)
_Static_assert(offsetof(shmlog_budget_t, limit) == 16, "budget limit moved");
_Static_assert(offsetof(shmlog_budget_t, reserved) == 128, "budget reserved moved");
_Static_assert(sizeof(shmlog_budget_t) == 256, "budget size");

/* header_bytes: the header rounded up to a page, so chunks start page-aligned */
#define SHMLOG_HEADER_BYTES     (((sizeof(shmlog_part_hdr_t) + 4095u) / 4096u) * 4096u)

#endif
