/* shmlog.h — the C core's public surface, included by the cffi module. */
#ifndef SHMLOG_H
#define SHMLOG_H

#include "codec.h"
#include "crc32c.h"
#include "futex.h"
#include "keyed.h"
#include "kafka_batch.h"
#include "layout.h"
#include "log.h"
#include "partitioner.h"

#endif
