/* log.h — one partition's log in a shared-memory region: claim/commit,
 * read, wait, chunk rotation and reuse, and the reaper's repair calls.
 *
 * The core works on memory it is handed: it never maps, allocates or
 * unlinks. Every function returns >= 0 (a count, a slot, an offset, a kind)
 * or -errno, and nothing else is negative:
 *   -EAGAIN    buffer full until the deadline (no free chunk)
 *   -EMSGSIZE  batch larger than the region's max_batch_bytes
 *   -E2BIG     (append_pickled) batch above the frame limit: split it
 *   -EINVAL    bad argument, -EPROTO bad magic/version/geometry
 *   -EBADMSG   corrupt batch (bad CRC, bad length), offset in info->bad_offset
 *   -ERANGE    cursor's chunk was reused (the reader fell behind)
 *   -ENOSPC    no free slot / output arrays too small
 *   -ENOMEM    the next chunk's pages cannot be reserved (tmpfs full)
 *   -ETIMEDOUT a wait found no data before its timeout
 * The files: region.c (format, attach, slots), claim.c (claim, commit,
 * append), chunk.c (seal, rotate, reclaim, gauges), read.c (read, validate,
 * seek, wait, frontier), repair.c (the reaper's calls); log_internal.h is
 * what they share.
 */
#ifndef SHMLOG_LOG_H
#define SHMLOG_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "layout.h"

/* process-local handle; lives in Python-owned memory (ffi.new) */
typedef struct {
    uint8_t *base;
    size_t len;
    shmlog_part_hdr_t *hdr;
    uint32_t chunk_bytes;
    uint32_t chunk_count;
    uint32_t max_batch_bytes;
    uint32_t header_bytes;
    uint32_t pid;
    uint32_t _pad;
    /* process-local pointers to the topic doorbell (partition 0's header),
     * or NULL; set by whoever maps the topic */
    volatile uint32_t *bell_futex;
    volatile uint32_t *bell_waiters;
    /* the data dir's account (layout.h), or NULL: then rotations reserve
     * pages without charging (a region used outside a data dir) */
    shmlog_budget_t *budget;
} shmlog_log_t;

/* a reader's position: process-local, one per assigned partition */
typedef struct {
    uint64_t seq;          /* chunk sequence number the cursor is in */
    uint64_t next_offset;  /* next offset to hand out */
    uint32_t pos;          /* byte position of the next frame in that chunk */
    uint32_t _pad;
} shmlog_cursor_t;

typedef struct {
    uint64_t first_seq;          /* oldest chunk the read touched: validate it after copying */
    uint32_t frames;             /* data frames consumed */
    uint32_t _pad;
    uint64_t bytes;              /* frame bytes consumed */
    /* a frame whose batch is compressed (lz4): the caller decompresses and decodes it */
    uint64_t frame_pos;          /* region position of its 64-byte header, 0 = none */
    uint64_t frame_base_offset;
    int64_t frame_first_timestamp;
    uint32_t frame_payload_bytes;
    uint32_t frame_record_count;
    uint32_t frame_attributes;
    uint32_t frame_uncompressed_bytes;
    uint64_t bad_offset;         /* with -EBADMSG: offset (or cursor offset) of the bad frame */
    uint32_t records;            /* records decoded into the out arrays */
    uint32_t one_len;            /* SHMLOG_READ_ONE: the value's length (its bytes are in dst) */
    shmlog_cursor_t start;       /* the cursor before the read: restored if it must be redone */
    uint64_t one_offset;         /* SHMLOG_READ_ONE: the record's offset and timestamp */
    int64_t one_timestamp;
    uint64_t pickle_bytes;       /* SHMLOG_READ_PICKLE: the stream's length in dst */
    /* shmlog_log_poll_pickled: how the data was waited for (SHMLOG_WAITED_*)
     * and when the wait saw it (CLOCK_MONOTONIC ns, 0 if it did not wait):
     * the adaptive wait (shmlog/client/arrivals.py) dates arrivals by them */
    uint32_t waited;
    uint32_t _pad2;
    uint64_t seen_ns;
} shmlog_read_info_t;

/* how shmlog_log_poll_pickled's data came (shmlog_read_info_t.waited) */
#define SHMLOG_WAITED_NONE   0  /* there at the first look, or never came */
#define SHMLOG_WAITED_SPIN   1  /* seen while spinning: seen_ns is its arrival, to a poll's width */
#define SHMLOG_WAITED_FUTEX  2  /* seen after a futex sleep: a wake-up (or the sleep's end) later */

/* frontier states (shmlog_log_frontier) */
#define SHMLOG_FRONTIER_IDLE      0  /* nothing claimed past the committed end */
#define SHMLOG_FRONTIER_BLOCKED   1  /* a claimed frame is not committed yet */
#define SHMLOG_FRONTIER_UNSEALED  2  /* chunk overflowed, seal not written yet */
#define SHMLOG_FRONTIER_FULL      3  /* sealed, waiting for a free chunk (backpressure) */

size_t shmlog_log_region_bytes(uint32_t chunk_bytes, uint32_t chunk_count);
/* base must be zero-filled past the header (a fresh shm object is) */
int shmlog_log_format(void *base, size_t len, uint32_t chunk_bytes, uint32_t chunk_count,
                      uint32_t max_batch_bytes, uint32_t flags, uint32_t partition,
                      uint64_t initial_offset, uint32_t pid);
int shmlog_log_attach(shmlog_log_t *log, void *base, size_t len, uint32_t pid);

int shmlog_log_producer_register(shmlog_log_t *log);
void shmlog_log_producer_release(shmlog_log_t *log, int slot);
int shmlog_log_reader_register(shmlog_log_t *log, uint64_t position, uint32_t gating,
                               uint64_t group_id);
void shmlog_log_reader_release(shmlog_log_t *log, int slot);
void shmlog_log_reader_set_position(shmlog_log_t *log, int slot, uint64_t position);
void shmlog_log_reader_set_pin(shmlog_log_t *log, int slot, uint64_t pin);

/* The slots in use, in one call (the reaper scans hundreds of partitions
 * every pass): slots[k] is a producer slot index, or SHMLOG_MAX_PRODUCERS +
 * a reader slot index, and pids[k] its pid. Both arrays hold
 * SHMLOG_MAX_PRODUCERS + SHMLOG_MAX_READERS entries; returns the count. */
uint32_t shmlog_log_slot_pids(shmlog_log_t *log, uint32_t *slots, uint32_t *pids);

/* Append one batch, encoding records straight into the claimed space.
 * Blocks (spin, then futex) up to timeout_ns for a free chunk. */
int shmlog_log_append(shmlog_log_t *log, int slot, const shmlog_batch_in_t *in,
                      uint64_t timeout_ns, uint64_t *base_offset);
/* Append a batch of one unkeyed record: the latency path (a paced producer
 * commits each message alone) in one crossing with nothing to allocate.
 * Returns the base offset, or -errno. */
int64_t shmlog_log_append_one(shmlog_log_t *log, int slot, const char *value,
                              int32_t value_len, int64_t timestamp, uint64_t producer_id,
                              uint32_t producer_seq, uint64_t timeout_ns);
/* Append an unkeyed batch whose values come as the pickle of a list of
 * bytes (codec.h, shmlog_codec_pickled_size): one pass in Python, lengths
 * read in C. Returns the base offset, or -errno: -EPROTO for a stream of
 * another shape, -EMSGSIZE for a value above max_value, -E2BIG for a batch
 * above the frame limit (the caller falls back to columns or splits). */
int64_t shmlog_log_append_pickled(shmlog_log_t *log, int slot, const uint8_t *stream,
                                  size_t stream_len, int32_t max_value, int64_t timestamp,
                                  uint64_t producer_id, uint32_t producer_seq,
                                  uint64_t timeout_ns);
/* Append an already-encoded (e.g. lz4-compressed) record section. */
int shmlog_log_append_section(shmlog_log_t *log, int slot, const uint8_t *payload,
                              uint32_t payload_bytes, uint32_t record_count,
                              uint32_t attributes, int64_t first_timestamp,
                              int64_t max_timestamp, uint64_t producer_id,
                              uint32_t producer_seq, uint32_t uncompressed_bytes,
                              uint64_t timeout_ns, uint64_t *base_offset);
/* Test points: the slow-path steps where another process may run a whole
 * ring cycle between a load and the CAS that acts on it. A test installs a
 * function that does exactly that; NULL (one predicted branch) otherwise. */
#define SHMLOG_POINT_RECLAIM 1  /* reclaim: oldest chunk checked, before its CAS */
#define SHMLOG_POINT_ROTATE  2  /* rotation: seq seen active, before the next chunk's CAS */
#define SHMLOG_POINT_SEAL    3  /* seal: ACTIVE state loaded, before its CAS */
#define SHMLOG_POINT_RESERVE 4  /* rotation: released chunk charged, before its pages are reserved */
#define SHMLOG_POINT_RELEASE 5  /* release: chunk RELEASING and flagged, before its pages go */
typedef void (*shmlog_point_fn)(int point);
void shmlog_set_test_point(shmlog_point_fn fn);

/* The calling thread's "about to block" hook: called once, on this
 * thread, right before an append first sleeps (waiting for a chunk to
 * rotate, for space, or for the budget) or reserves a chunk's pages (a
 * long syscall), and then cleared. A caller that holds a lock other threads
 * need while it waits drops it there: shmlog.core._commit's calls hold
 * Python's GIL through an append that does not block (a thread that takes
 * the GIL at every commit's crossing slows a streaming producer down by
 * half; csrc/commit_call.c). NULL (the default; cffi's calls have released
 * the GIL already): nothing is called. */
typedef void (*shmlog_block_fn)(void);
void shmlog_set_block_hook(shmlog_block_fn fn);

/* Test hook for fault tests: claim space and write the CLAIMED header, then
 * return without committing, as a producer SIGKILLed mid-batch would. */
int shmlog_log_claim_only(shmlog_log_t *log, int slot, uint32_t payload_bytes,
                          uint32_t record_count, uint64_t *base_offset);

/* Read committed records from the cursor into out (values in place: positions
 * are region positions). Returns records decoded, 0 if none (or a compressed
 * frame is in info->frame_pos), or -errno. Stops at max_records/max_bytes. */
int shmlog_log_read(shmlog_log_t *log, shmlog_cursor_t *cursor, shmlog_records_out_t *out,
                    uint64_t max_bytes, shmlog_read_info_t *info);
/* shmlog_log_read_pickled, waiting (spin, then futex) up to timeout_ns when
 * nothing is committed yet, and publishing the reader slot's position after
 * a pickled read (reader_slot >= 0): a caught-up consumer's whole poll is
 * one crossing. */
int shmlog_log_poll_pickled(shmlog_log_t *log, shmlog_cursor_t *cursor, shmlog_records_out_t *out,
                            uint32_t max_records, uint64_t max_bytes, uint32_t small_below,
                            shmlog_read_info_t *info, uint8_t *dst, size_t cap, int reader_slot,
                            uint64_t spin_ns, uint64_t timeout_ns, uint32_t read_flags);
/* Raw committed frames (for the spiller): positions and lengths. */
int shmlog_log_read_frames(shmlog_log_t *log, shmlog_cursor_t *cursor, uint64_t *frame_pos,
                           uint32_t *frame_bytes, uint64_t *frame_end_offsets,
                           uint32_t max_frames, uint64_t max_bytes, shmlog_read_info_t *info);
/* 0 if chunk `seq` still holds what was read from it, -ERANGE if reused */
int shmlog_log_validate(shmlog_log_t *log, uint64_t seq);
/* validate after copying out of a read: on -ERANGE the cursor goes back to
 * where the read started (info->start), so nothing is skipped */
int shmlog_log_validate_read(shmlog_log_t *log, shmlog_cursor_t *cursor,
                             const shmlog_read_info_t *info);

/* shmlog_log_read_pickled: what the read found, so the caller knows what to
 * do with it (a kind, never negative: negative returns are -errno only) */
#define SHMLOG_READ_NONE    0        /* nothing committed at the cursor */
#define SHMLOG_READ_PICKLE  1        /* info->pickle_bytes of pickle stream in dst;
                                      * validated */
#define SHMLOG_READ_ONE     2        /* with SHMLOG_READ_ONE_OK: the read found one
                                      * record, unkeyed, without headers, not null:
                                      * its value is in dst (info->one_len bytes),
                                      * its offset and timestamp in info; validated */
#define SHMLOG_READ_FRAME   3        /* a frame whose batch is compressed, at
                                      * info->frame_pos */
#define SHMLOG_READ_COLUMNS 4        /* info->records records in the out arrays
                                      * (headers, large values, or dst too small):
                                      * copy them out, then shmlog_log_validate_read */
#define SHMLOG_READ_ONE_OK  1u       /* read_flags: a lone record may come back as
                                      * SHMLOG_READ_ONE (a caught-up poll() builds
                                      * its message from that, no pickle) */
/* Read up to max_records (<= out's arrays) and, when the records are small
 * and carry no headers, write the whole result as one pickle stream into
 * dst: a tuple (values, keys|None, offsets|None, base_offset,
 * timestamps|None, first_timestamp, first_seq, bytes), where None means
 * "all null keys", "dense from base_offset" and "all first_timestamp".
 * Validated before it returns: one crossing and one pickle.loads per read,
 * nothing per record in Python. Returns a SHMLOG_READ_* kind, or -errno. */
int shmlog_log_read_pickled(shmlog_log_t *log, shmlog_cursor_t *cursor, shmlog_records_out_t *out,
                            uint32_t max_records, uint64_t max_bytes, uint32_t small_below,
                            shmlog_read_info_t *info, uint8_t *dst, size_t cap,
                            uint32_t read_flags);
/* 0 when data is ready at the cursor, -ETIMEDOUT when none came within
 * timeout_ns; spins spin_ns first */
int shmlog_log_wait(shmlog_log_t *log, const shmlog_cursor_t *cursor, uint64_t spin_ns,
                    uint64_t timeout_ns);
/* ring the doorbell of `bell` (partition 0 of a topic) for this log's commits */
void shmlog_log_set_bell(shmlog_log_t *log, shmlog_log_t *bell);
/* Wait until any of n cursors has data: returns its index, -ETIMEDOUT when
 * none had data within timeout_ns, -EINVAL for n == 0. Sleeps on bell's
 * doorbell (all logs must ring it), spinning spin_ns first. */
int shmlog_log_wait_any(shmlog_log_t **logs, shmlog_cursor_t **cursors, uint32_t n,
                        shmlog_log_t *bell, uint64_t spin_ns, uint64_t timeout_ns);
/* Position the cursor at offset. 0 ok; -ERANGE if offset < start offset (the
 * cursor is then at the start offset). Offsets past the end stop at the end. */
int shmlog_log_seek(shmlog_log_t *log, shmlog_cursor_t *cursor, uint64_t offset);
/* Position the cursor after the last committed frame; returns 0 */
int shmlog_log_seek_end(shmlog_log_t *log, shmlog_cursor_t *cursor);
uint64_t shmlog_log_start_offset(shmlog_log_t *log);
/* the next offset a claim would take (claimed, not necessarily committed) */
uint64_t shmlog_log_claimed_end(shmlog_log_t *log);
/* bytes claimed in the active chunk and chunks in use, for fill gauges */
uint32_t shmlog_log_chunks_in_use(shmlog_log_t *log);
/* chunks that cannot be reused now: the active one and those a gating
 * reader, a pin or the spiller still needs. chunk_count of them and
 * producers block; the rest of chunks_in_use is retained data (replay) */
uint32_t shmlog_log_chunks_held(shmlog_log_t *log);

/* spiller / supervisor */
void shmlog_log_set_spilled(shmlog_log_t *log, uint64_t offset);
void shmlog_log_set_durable(shmlog_log_t *log, uint64_t offset);
/* free every chunk older than the active one whose reuse is allowed now */
int shmlog_log_reclaim(shmlog_log_t *log);
/* Free the sealed chunks that are spilled (or read) and behind every live
 * reader, then give the pages of every FREE chunk back to the tmpfs
 * (MADV_REMOVE) and mark it released: the next rotation into it reserves
 * its pages again (-ENOMEM to the producer if it cannot). Returns chunks
 * released, or -errno if giving pages back failed. For idle partitions of
 * disk topics: the supervisor calls it, never the claim path. */
int shmlog_log_release(shmlog_log_t *log);

/* the data dir's account (layout.h) */
void shmlog_log_set_budget(shmlog_log_t *log, shmlog_budget_t *budget);
/* add bytes to `reserved` unless that passes `limit`: 0, or -ENOSPC (and
 * `pressure` bumped) */
int shmlog_budget_charge(shmlog_budget_t *budget, uint64_t bytes);
void shmlog_budget_credit(shmlog_budget_t *budget, uint64_t bytes);
/* the account's word (bytes and tag) as it is now: a recount's starting point */
uint64_t shmlog_budget_snapshot(shmlog_budget_t *budget);
/* set the count to `bytes` if nothing charged, credited or recounted since
 * `snapshot` was taken: 0, or -EAGAIN (look at the regions again) */
int shmlog_budget_recount(shmlog_budget_t *budget, uint64_t snapshot, uint64_t bytes);
/* what this region holds reserved by the count above: the header and every
 * chunk not marked released (for the supervisor's recount) */
uint64_t shmlog_log_reserved_bytes(shmlog_log_t *log);

/* reaper */
int shmlog_log_reap_producer(shmlog_log_t *log, int slot);
int shmlog_log_reap_reader(shmlog_log_t *log, int slot);
int shmlog_log_unblock(shmlog_log_t *log, uint64_t seq, uint32_t pos, int force);
int shmlog_log_force_seal(shmlog_log_t *log, uint64_t seq);
/* undo what dead_pid left mid-transition: its RECLAIMING chunks go back to
 * SEALED (reclaimed again later, with every check), its OPENING ones to FREE */
int shmlog_log_repair_chunks(shmlog_log_t *log, uint32_t dead_pid);
/* the word a frame of chunk `seq` carries (layout.h): for tools and tests */
uint64_t shmlog_frame_word(uint64_t seq, uint32_t type, uint32_t frame_bytes);
int shmlog_log_frontier(shmlog_log_t *log, shmlog_cursor_t *cursor, uint64_t *seq,
                        uint32_t *pos);

#endif
