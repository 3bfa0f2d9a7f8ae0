"""cffi build script for shmlog.core._core (out-of-line API mode).

Run by setuptools through ``cffi_modules`` in setup.py. The cdef below only
names what Python calls; the C headers in csrc/ stay the source of truth for
layouts (``...`` lets the compiler fill in sizes and offsets).
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent.parent / "csrc"

CDEF = r"""
#define SHMLOG_MAGIC ...
#define SHMLOG_VERSION ...
#define SHMLOG_MAX_CHUNKS ...
#define SHMLOG_MAX_PRODUCERS ...
#define SHMLOG_MAX_READERS ...
#define SHMLOG_FRAME_ALIGN ...
#define SHMLOG_FRAME_HEADER ...
#define SHMLOG_MIN_CHUNK_BYTES ...
#define SHMLOG_MAX_CHUNK_BYTES ...
#define SHMLOG_HEADER_BYTES ...
#define SHMLOG_F_GATE_READERS ...
#define SHMLOG_F_GATE_SPILL ...
#define SHMLOG_F_CLOSED ...
#define SHMLOG_CHUNK_FREE ...
#define SHMLOG_CHUNK_ACTIVE ...
#define SHMLOG_CHUNK_SEALED ...
#define SHMLOG_CHUNK_RECLAIMING ...
#define SHMLOG_CHUNK_OPENING ...
#define SHMLOG_CHUNK_RELEASING ...
#define SHMLOG_FRAME_CLAIMED ...
#define SHMLOG_FRAME_DATA ...
#define SHMLOG_FRAME_PAD ...
#define SHMLOG_FRAME_TYPE_MASK ...
#define SHMLOG_DISK_FRAME_DATA ...
#define SHMLOG_ATTR_LZ4 ...
#define SHMLOG_ATTR_COMPRESSION_MASK ...
#define SHMLOG_FRONTIER_IDLE ...
#define SHMLOG_FRONTIER_BLOCKED ...
#define SHMLOG_FRONTIER_UNSEALED ...
#define SHMLOG_FRONTIER_FULL ...

typedef struct {
    uint64_t tail;
    uint64_t seq;
    uint64_t base_offset;
    uint64_t state;
    uint64_t seal;
    uint64_t released;
    ...;
} shmlog_chunk_t;

typedef struct {
    uint32_t pid;
    uint32_t fenced;
    uint64_t claim_seq;
    uint64_t claim_tail;
    uint32_t claim_bytes;
    uint32_t claim_records;
    uint64_t batches;
    uint64_t records;
    uint64_t aborted;
    uint32_t claim_stamped;
    ...;
} shmlog_producer_slot_t;

typedef struct {
    uint32_t pid;
    uint32_t gating;
    uint64_t position;
    uint64_t pin;
    uint64_t group_id;
    ...;
} shmlog_reader_slot_t;

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t header_bytes;
    uint64_t region_bytes;
    uint32_t chunk_bytes;
    uint32_t chunk_count;
    uint32_t max_batch_bytes;
    uint32_t flags;
    uint32_t partition;
    uint32_t creator_pid;
    uint64_t initial_offset;
    uint64_t active_seq;
    uint32_t data_futex;
    uint32_t data_waiters;
    uint32_t bell_futex;
    uint32_t bell_waiters;
    uint32_t data_hungry;
    uint32_t bell_hungry;
    uint32_t space_futex;
    uint32_t space_waiters;
    uint64_t start_offset;
    uint64_t spilled_offset;
    uint64_t durable_offset;
    uint64_t supervisor_pid;
    uint64_t aborted_batches;
    uint64_t reclaimed_chunks;
    uint64_t rotations;
    shmlog_chunk_t chunks[...];
    shmlog_producer_slot_t producers[...];
    shmlog_reader_slot_t readers[...];
    ...;
} shmlog_part_hdr_t;

typedef struct {
    uint64_t frame;
    uint32_t crc;
    uint32_t payload_bytes;
    uint64_t base_offset;
    uint32_t record_count;
    uint16_t attributes;
    uint16_t batch_version;
    int64_t first_timestamp;
    int64_t max_timestamp;
    uint64_t producer_id;
    uint32_t producer_seq;
    uint32_t uncompressed_bytes;
} shmlog_frame_hdr_t;

typedef struct {
    uint32_t count;
    const uint8_t *values;
    const uint8_t *const *value_ptrs;
    const int32_t *value_lens;
    const uint8_t *keys;
    const int32_t *key_lens;
    const uint8_t *headers;
    const uint32_t *header_lens;
    const int64_t *timestamps;
    int64_t timestamp;
    uint64_t producer_id;
    uint32_t producer_seq;
    uint32_t attributes;
    const uint8_t *const *key_ptrs;
    const uint8_t *const *header_ptrs;
} shmlog_batch_in_t;

typedef struct {
    uint32_t capacity;
    uint64_t *offsets;
    int64_t *timestamps;
    uint64_t *value_pos;
    int32_t *value_lens;
    uint64_t *key_pos;
    int32_t *key_lens;
    uint64_t *header_pos;
    uint32_t *header_lens;
    uint32_t flags;
} shmlog_records_out_t;
#define SHMLOG_REC_KEYS ...
#define SHMLOG_REC_HEADERS ...
#define SHMLOG_REC_NULLS ...

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint64_t limit;
    uint64_t reserved;
    uint64_t refused;
    uint32_t pressure;
    ...;
} shmlog_budget_t;
#define SHMLOG_BUDGET_MAGIC ...
#define SHMLOG_BUDGET_BYTES_MASK ...

typedef struct {
    uint8_t *base;
    size_t len;
    shmlog_part_hdr_t *hdr;
    uint32_t chunk_bytes;
    uint32_t chunk_count;
    uint32_t max_batch_bytes;
    uint32_t header_bytes;
    uint32_t pid;
    ...;
} shmlog_log_t;

typedef struct {
    uint64_t seq;
    uint64_t next_offset;
    uint32_t pos;
    ...;
} shmlog_cursor_t;

typedef struct {
    uint64_t first_seq;
    uint32_t frames;
    uint64_t bytes;
    uint64_t frame_pos;
    uint64_t frame_base_offset;
    int64_t frame_first_timestamp;
    uint32_t frame_payload_bytes;
    uint32_t frame_record_count;
    uint32_t frame_attributes;
    uint32_t frame_uncompressed_bytes;
    uint64_t bad_offset;
    uint32_t records;
    uint32_t one_len;
    shmlog_cursor_t start;
    uint64_t one_offset;
    int64_t one_timestamp;
    uint64_t pickle_bytes;
    uint32_t waited;
    uint32_t _pad2;
    uint64_t seen_ns;
    ...;
} shmlog_read_info_t;

int32_t shmlog_murmur2(const uint8_t *data, size_t len);
uint32_t shmlog_key_partition(const char *key, size_t len, uint32_t num_partitions);
int64_t shmlog_keyed_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                            const char *values, const int32_t *value_lens,
                            const char *keys, const int32_t *key_lens, uint32_t n,
                            int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                            uint64_t timeout_ns, uint64_t *ends, uint32_t *failed);
typedef struct {
    const uint8_t *value;
    const uint8_t *key;
    const uint8_t *headers;
    int64_t timestamp;
    int32_t value_len;
    int32_t key_len;
    uint32_t header_len;
    int32_t partition;
} shmlog_rich_record_t;
#define SHMLOG_RICH_KEYS ...
#define SHMLOG_RICH_HEADERS ...
#define SHMLOG_RICH_TIMESTAMPS ...
#define SHMLOG_RICH_CALLBACKS ...
int64_t shmlog_rich_append(shmlog_log_t *const *logs, const int32_t *slots, uint32_t nparts,
                           const shmlog_rich_record_t *recs, uint32_t n, uint32_t flags,
                           int64_t timestamp, uint64_t producer_id, uint32_t producer_seq,
                           uint64_t timeout_ns, uint64_t *ends, uint32_t *failed,
                           int32_t *out_parts, uint64_t *offsets);
int64_t shmlog_keyed_append_one(shmlog_log_t *log, int slot, const char *key, int32_t key_len,
                                const char *value, int32_t value_len, int64_t timestamp,
                                uint64_t producer_id, uint32_t producer_seq, uint64_t timeout_ns);
void shmlog_murmur2_partitions(const uint8_t *keys, const int32_t *lens, uint32_t n,
                               uint32_t num_partitions, uint32_t *out);
uint32_t shmlog_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t shmlog_crc32c_sw(uint32_t crc, const void *buf, size_t len);
int shmlog_crc32c_hw(void);
uint32_t shmlog_crc32c_path(int path, uint32_t crc, const void *buf, size_t len);
#define SHMLOG_CRC32C_PATH_TABLE 0
#define SHMLOG_CRC32C_PATH_SSE42 1
#define SHMLOG_CRC32C_PATH_FOLD 2

int shmlog_futex_wait(uint32_t *word, uint32_t expected, uint64_t timeout_ns);
int shmlog_futex_wake(uint32_t *word, int count);
uint64_t shmlog_now_ns(void);

int64_t shmlog_codec_encoded_size(const shmlog_batch_in_t *in);
int64_t shmlog_codec_encode(const shmlog_batch_in_t *in, uint8_t *dst, size_t cap);
int64_t shmlog_codec_encode_sized(const shmlog_batch_in_t *in, uint8_t *dst, size_t len);
int64_t shmlog_codec_decode(const uint8_t *payload, size_t len, uint32_t record_count,
                            uint64_t base_offset, int64_t first_timestamp,
                            uint64_t pos_base, uint64_t skip_below,
                            shmlog_records_out_t *out, uint32_t index);

int64_t shmlog_codec_values_pickle(const uint8_t *base, const uint64_t *pos, const int32_t *lens,
                                   uint32_t n, uint8_t *dst, size_t cap);
size_t shmlog_log_region_bytes(uint32_t chunk_bytes, uint32_t chunk_count);
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
uint32_t shmlog_log_slot_pids(shmlog_log_t *log, uint32_t *slots, uint32_t *pids);
int shmlog_log_append(shmlog_log_t *log, int slot, const shmlog_batch_in_t *in,
                      uint64_t timeout_ns, uint64_t *base_offset);
int64_t shmlog_log_append_one(shmlog_log_t *log, int slot, const char *value,
                              int32_t value_len, int64_t timestamp, uint64_t producer_id,
                              uint32_t producer_seq, uint64_t timeout_ns);
int64_t shmlog_log_append_pickled(shmlog_log_t *log, int slot, const uint8_t *stream,
                                  size_t stream_len, int32_t max_value, int64_t timestamp,
                                  uint64_t producer_id, uint32_t producer_seq,
                                  uint64_t timeout_ns);
int shmlog_log_append_section(shmlog_log_t *log, int slot, const uint8_t *payload,
                              uint32_t payload_bytes, uint32_t record_count,
                              uint32_t attributes, int64_t first_timestamp,
                              int64_t max_timestamp, uint64_t producer_id,
                              uint32_t producer_seq, uint32_t uncompressed_bytes,
                              uint64_t timeout_ns, uint64_t *base_offset);
#define SHMLOG_POINT_RECLAIM ...
#define SHMLOG_POINT_ROTATE ...
#define SHMLOG_POINT_SEAL ...
#define SHMLOG_POINT_RESERVE ...
#define SHMLOG_POINT_RELEASE ...
typedef void (*shmlog_point_fn)(int point);
void shmlog_set_test_point(shmlog_point_fn fn);
typedef void (*shmlog_block_fn)(void);
void shmlog_set_block_hook(shmlog_block_fn fn);
int shmlog_log_claim_only(shmlog_log_t *log, int slot, uint32_t payload_bytes,
                          uint32_t record_count, uint64_t *base_offset);
int shmlog_log_read(shmlog_log_t *log, shmlog_cursor_t *cursor, shmlog_records_out_t *out,
                    uint64_t max_bytes, shmlog_read_info_t *info);
int shmlog_log_validate_read(shmlog_log_t *log, shmlog_cursor_t *cursor,
                             const shmlog_read_info_t *info);
#define SHMLOG_READ_NONE ...
#define SHMLOG_READ_PICKLE ...
#define SHMLOG_READ_ONE ...
#define SHMLOG_READ_FRAME ...
#define SHMLOG_READ_COLUMNS ...
#define SHMLOG_READ_ONE_OK ...
#define SHMLOG_WAITED_NONE ...
#define SHMLOG_WAITED_SPIN ...
#define SHMLOG_WAITED_FUTEX ...
int shmlog_log_read_pickled(shmlog_log_t *log, shmlog_cursor_t *cursor, shmlog_records_out_t *out,
                            uint32_t max_records, uint64_t max_bytes, uint32_t small_below,
                            shmlog_read_info_t *info, uint8_t *dst, size_t cap,
                            uint32_t read_flags);
int shmlog_log_poll_pickled(shmlog_log_t *log, shmlog_cursor_t *cursor, shmlog_records_out_t *out,
                            uint32_t max_records, uint64_t max_bytes, uint32_t small_below,
                            shmlog_read_info_t *info, uint8_t *dst, size_t cap, int reader_slot,
                            uint64_t spin_ns, uint64_t timeout_ns, uint32_t read_flags);
int shmlog_log_read_frames(shmlog_log_t *log, shmlog_cursor_t *cursor, uint64_t *frame_pos,
                           uint32_t *frame_bytes, uint64_t *frame_end_offsets,
                           uint32_t max_frames, uint64_t max_bytes, shmlog_read_info_t *info);
int shmlog_log_validate(shmlog_log_t *log, uint64_t seq);
int shmlog_log_wait(shmlog_log_t *log, const shmlog_cursor_t *cursor, uint64_t spin_ns,
                    uint64_t timeout_ns);
void shmlog_log_set_bell(shmlog_log_t *log, shmlog_log_t *bell);
int shmlog_log_wait_any(shmlog_log_t **logs, shmlog_cursor_t **cursors, uint32_t n,
                        shmlog_log_t *bell, uint64_t spin_ns, uint64_t timeout_ns);
int shmlog_log_seek(shmlog_log_t *log, shmlog_cursor_t *cursor, uint64_t offset);
int shmlog_log_seek_end(shmlog_log_t *log, shmlog_cursor_t *cursor);
uint64_t shmlog_log_start_offset(shmlog_log_t *log);
uint64_t shmlog_log_claimed_end(shmlog_log_t *log);
uint32_t shmlog_log_chunks_in_use(shmlog_log_t *log);
uint32_t shmlog_log_chunks_held(shmlog_log_t *log);
void shmlog_log_set_spilled(shmlog_log_t *log, uint64_t offset);
void shmlog_log_set_durable(shmlog_log_t *log, uint64_t offset);
int shmlog_log_reclaim(shmlog_log_t *log);
int shmlog_log_release(shmlog_log_t *log);
void shmlog_log_set_budget(shmlog_log_t *log, shmlog_budget_t *budget);
int shmlog_budget_charge(shmlog_budget_t *budget, uint64_t bytes);
void shmlog_budget_credit(shmlog_budget_t *budget, uint64_t bytes);
uint64_t shmlog_budget_snapshot(shmlog_budget_t *budget);
int shmlog_budget_recount(shmlog_budget_t *budget, uint64_t snapshot, uint64_t bytes);
uint64_t shmlog_log_reserved_bytes(shmlog_log_t *log);
int shmlog_log_reap_producer(shmlog_log_t *log, int slot);
int shmlog_log_reap_reader(shmlog_log_t *log, int slot);
int shmlog_log_unblock(shmlog_log_t *log, uint64_t seq, uint32_t pos, int force);
int shmlog_log_force_seal(shmlog_log_t *log, uint64_t seq);
int shmlog_log_repair_chunks(shmlog_log_t *log, uint32_t dead_pid);
uint64_t shmlog_frame_word(uint64_t seq, uint32_t type, uint32_t frame_bytes);
int shmlog_log_frontier(shmlog_log_t *log, shmlog_cursor_t *cursor, uint64_t *seq,
                        uint32_t *pos);

#define SHMLOG_KAFKA_BATCH_HEADER ...
typedef struct {
    int64_t base_offset;
    int32_t batch_length;
    int32_t leader_epoch;
    uint32_t crc;
    int16_t attributes;
    int16_t producer_epoch;
    int32_t last_offset_delta;
    int64_t first_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int32_t base_sequence;
    int32_t record_count;
    uint32_t records_pos;
    uint32_t records_len;
} shmlog_kafka_batch_t;
int64_t shmlog_kafka_batch_parse(const uint8_t *buf, size_t len, shmlog_kafka_batch_t *out);
int64_t shmlog_kafka_records_to_section(const uint8_t *p, size_t len, uint32_t count,
                                        uint8_t *dst, size_t cap, int64_t *max_ts_delta);
uint64_t shmlog_kafka_encode_bound(const shmlog_records_out_t *out, uint32_t n);
uint32_t shmlog_kafka_encode_fit(const shmlog_records_out_t *out, uint32_t n, uint64_t budget);
int64_t shmlog_kafka_encode(const uint8_t *base, const shmlog_records_out_t *out, uint32_t n,
                            uint8_t *dst, size_t cap);
"""

SOURCES = ["chunk.c", "claim.c", "codec.c", "crc32c.c", "futex.c", "kafka_batch.c", "keyed.c", "partitioner.c",
           "read.c", "region.c", "repair.c"]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "shmlog.core._core",
    '#include "shmlog.h"',
    sources=[str(Path("csrc") / s) for s in SOURCES],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fno-strict-aliasing"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
