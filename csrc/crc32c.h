/* crc32c.h — CRC32C (Castagnoli) checksum used to protect shmlog records.
 *
 * Parameters: reflected polynomial 0x82F63B78, init ~0, final xor ~0
 * (the iSCSI / ext4 / RocksDB CRC), so check("123456789") == 0xE3069283.
 * Chaining: shmlog_crc32c(shmlog_crc32c(0, a, n), b, m) is the CRC of a||b,
 * which lets a record header and payload be checksummed without copying.
 *
 * The library picks the SSE4.2 `crc32` instruction at run time when the CPU
 * has it, and a portable slicing-by-8 table otherwise; both give identical
 * results. All functions are thread-safe, allocate nothing and touch no errno.
 */
#ifndef SHMLOG_CRC32C_H
#define SHMLOG_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc: the previous CRC (0 to start); returns the CRC of the concatenation. */
uint32_t shmlog_crc32c(uint32_t crc, const void *buf, size_t len);

/* 1 when the SSE4.2 path is in use (runtime CPU check), else 0. */
int shmlog_crc32c_hw(void);

/* Internal, for tests and benchmarks: same contract as shmlog_crc32c but
 * always uses the portable table path, whatever the CPU supports. */
uint32_t shmlog_crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif /* SHMLOG_CRC32C_H */
