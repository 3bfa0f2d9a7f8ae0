/* crc32c.h — CRC32C (Castagnoli) checksum used to protect shmlog records.
 *
 * Parameters: reflected polynomial 0x82F63B78, init ~0, final xor ~0
 * (the iSCSI / ext4 / RocksDB CRC), so check("123456789") == 0xE3069283.
 * Chaining: shmlog_crc32c(shmlog_crc32c(0, a, n), b, m) is the CRC of a||b,
 * which lets a record header and payload be checksummed without copying.
 *
 * The library picks at run time the fastest path the CPU has: carry-less
 * multiply folding (AVX-512 VPCLMULQDQ), the SSE4.2 `crc32` instruction, or
 * a portable slicing-by-8 table; all give identical results. All functions
 * are thread-safe, allocate nothing and touch no errno.
 */
#ifndef SHMLOG_CRC32C_H
#define SHMLOG_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc: the previous CRC (0 to start); returns the CRC of the concatenation. */
uint32_t shmlog_crc32c(uint32_t crc, const void *buf, size_t len);

#define SHMLOG_CRC32C_PATH_TABLE 0
#define SHMLOG_CRC32C_PATH_SSE42 1 /* the crc32 instruction */
#define SHMLOG_CRC32C_PATH_FOLD 2  /* VPCLMULQDQ folding, 256 B..2 MiB; else SSE4.2 */

/* The best path this CPU runs (runtime check): SHMLOG_CRC32C_PATH_*. */
int shmlog_crc32c_hw(void);

/* Internal, for tests and benchmarks: the CRC by `path` or, if this CPU
 * lacks it, by the best path it has below that. */
uint32_t shmlog_crc32c_path(int path, uint32_t crc, const void *buf, size_t len);

/* Internal, for tests and benchmarks: same contract as shmlog_crc32c but
 * always uses the portable table path, whatever the CPU supports. */
uint32_t shmlog_crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif /* SHMLOG_CRC32C_H */
