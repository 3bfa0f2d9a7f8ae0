/* pickle_bytes.h — one reader for a `bytes` or `None` item of a pickle
 * stream (protocol >= 3: SHORT_BINBYTES, BINBYTES, NONE), shared by the
 * record codec's value streams (codec.c) and the producer's rich queue
 * (keyed.c), so a bounds fix reaches both. Inline on purpose: it runs per
 * record on the produce fast path.
 */
#ifndef SHMLOG_PICKLE_BYTES_H
#define SHMLOG_PICKLE_BYTES_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define SHMLOG_PK_NONE 'N'
#define SHMLOG_PK_SHORT_BINBYTES 'C'
#define SHMLOG_PK_BINBYTES 'B'

/* The item at *pp (stream ends at `end`): its bytes in *v and *len, or None as
 * *v NULL, *len -1; *pp moves past it. 0, or -EPROTO (not bytes/None, or
 * truncated), or -EMSGSIZE (over 2 GiB). */
static inline int shmlog_pickle_bytes(const uint8_t **pp, const uint8_t *end,
                                      const uint8_t **v, int32_t *len)
{
    const uint8_t *p = *pp;
    uint32_t l;
    if (p >= end)
        return -EPROTO;
    switch (*p++) {
    case SHMLOG_PK_NONE:
        *v = NULL;
        *len = -1;
        *pp = p;
        return 0;
    case SHMLOG_PK_SHORT_BINBYTES:
        if (p >= end)
            return -EPROTO;
        l = *p++;
        break;
    case SHMLOG_PK_BINBYTES:
        if (end - p < 4)
            return -EPROTO;
        memcpy(&l, p, 4);
        p += 4;
        if (l > INT32_MAX)
            return -EMSGSIZE;
        break;
    default:
        return -EPROTO;
    }
    if ((size_t)(end - p) < l)
        return -EPROTO;
    *v = p;
    *len = (int32_t)l;
    *pp = p + l;
    return 0;
}

#endif
