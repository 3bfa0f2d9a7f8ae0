/* rich_record.h — one record of the producer's rich queue as the two C
 * sides of its commit share it: shmlog.core._messages (rich_columns) fills
 * an array of these from the queued Python tuples, pointing into their
 * bytes objects (which the caller keeps alive until the append returns),
 * and shmlog_rich_append (keyed.c) places and appends them. Plain C types
 * only: included by the CPython module and by the cffi core alike. */
#ifndef SHMLOG_RICH_RECORD_H
#define SHMLOG_RICH_RECORD_H

#include <stdint.h>

typedef struct {
    const uint8_t *value;   /* NULL with value_len -1: a null value */
    const uint8_t *key;     /* NULL with key_len -1: no key */
    const uint8_t *headers; /* an encoded header section, header_len bytes (0: none) */
    int64_t timestamp;      /* -1: the commit's time */
    int32_t value_len;
    int32_t key_len;
    uint32_t header_len;
    int32_t partition;      /* -1: the key's (murmur2) */
} shmlog_rich_record_t;

_Static_assert(sizeof(shmlog_rich_record_t) == 48, "shmlog_rich_record_t changed size");

/* what rich_columns reports about a commit's records (bits) */
#define SHMLOG_RICH_KEYS 1u       /* some record has a key */
#define SHMLOG_RICH_HEADERS 2u    /* some record has headers */
#define SHMLOG_RICH_TIMESTAMPS 4u /* some record has its own timestamp */
#define SHMLOG_RICH_CALLBACKS 8u  /* some record has an on_delivery */

#endif
