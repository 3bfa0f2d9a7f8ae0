/* rich_queue.h — the producer's calls in shmlog.core._messages (the
 * project's one CPython-API module; messages.c holds its consumer half and
 * the method table): the rich queue's records into shmlog_rich_record_t
 * (rich_record.h) and its delivery callbacks. Include after Python.h. */
#ifndef SHMLOG_RICH_QUEUE_H
#define SHMLOG_RICH_QUEUE_H

#include "rich_record.h"

/* rich_columns(records, n, out) -> flags (SHMLOG_RICH_*) */
PyObject *shmlog_py_rich_columns(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
/* deliver(records, n, cls, topic, parts, offsets, ts_now, err) -> None */
PyObject *shmlog_py_deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
/* first_nonempty(lists) -> index or -1 */
PyObject *shmlog_py_first_nonempty(PyObject *self, PyObject *lists);

/* an object the cyclic GC does not track: a container holding only such
 * objects may be untracked too, as CPython does for plain tuples */
static inline int shmlog_py_untracked(PyObject *o)
{
    return !PyObject_IS_GC(o) || !PyObject_GC_IsTracked(o);
}

/* ------------------------------------------------------------ RichQueue
 * The producer's rich queue (shmlog.core._messages.RichQueue; the queue a
 * _TopicState's rq holds): every send() that is not a bare value or a bare
 * keyed value appends its record here, straight into the C core's record
 * array (rich_record.h), with a reference to each of its objects, so that
 * a commit hands the array to shmlog_rich_append as it stands: no record
 * tuple per message, no pass that reads tuples into columns per commit.
 * Its struct is here for csrc/send.c (another extension module: it pushes
 * with the inline below after checking the object's type, which it looks
 * up in shmlog.core._messages once).
 *
 * A commit take()s the records into a batch of its own, so that sends made
 * meanwhile (a delivery callback's, another thread's while the commit
 * waits for space) go to the queue's next arrays while C reads the
 * batch's: no record pointer moves under C. recycle() hands the batch's
 * arrays back as the queue's spare, so a steady stream of commits
 * allocates nothing. */
#define SHMLOG_RQ_KEY 0
#define SHMLOG_RQ_VALUE 1
#define SHMLOG_RQ_HEADERS 2
#define SHMLOG_RQ_CALLBACK 3
#define SHMLOG_RQ_OBJS 4 /* objects held per record: key, value, header bytes, on_delivery */

typedef struct {
    PyObject_HEAD
    shmlog_rich_record_t *recs; /* cap records, n used */
    PyObject **objs;            /* SHMLOG_RQ_OBJS per record (None where absent), strong */
    Py_ssize_t n, cap;
    unsigned flags;             /* SHMLOG_RICH_* of the records held */
    /* a taken batch's arrays, back for reuse (NULL: none) */
    shmlog_rich_record_t *spare_recs;
    PyObject **spare_objs;
    Py_ssize_t spare_cap;
} shmlog_rich_queue_t;

/* room for one more record: the spare arrays when empty, else twice as
 * many (0, or -1 with MemoryError) */
static inline int shmlog_rq_grow(shmlog_rich_queue_t *q)
{
    if (q->n == 0 && q->spare_recs != NULL && q->spare_cap > q->cap) {
        PyMem_Free(q->recs);
        PyMem_Free(q->objs);
        q->recs = q->spare_recs;
        q->objs = q->spare_objs;
        q->cap = q->spare_cap;
        q->spare_recs = NULL;
        q->spare_objs = NULL;
        q->spare_cap = 0;
        return 0;
    }
    Py_ssize_t cap = q->cap ? q->cap * 2 : 256;
    shmlog_rich_record_t *recs = PyMem_Realloc(q->recs, (size_t)cap * sizeof(*recs));
    if (recs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    q->recs = recs;
    PyObject **objs = PyMem_Realloc(q->objs, (size_t)cap * SHMLOG_RQ_OBJS * sizeof(*objs));
    if (objs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    q->objs = objs;
    q->cap = cap;
    return 0;
}

/* what a record adds to its queue's flags (SHMLOG_RICH_*) */
static inline unsigned shmlog_rq_record_flags(const shmlog_rich_record_t *r, PyObject *on_delivery)
{
    return (r->key_len >= 0 ? SHMLOG_RICH_KEYS : 0) | (r->header_len ? SHMLOG_RICH_HEADERS : 0) |
           (r->timestamp >= 0 ? SHMLOG_RICH_TIMESTAMPS : 0) | (on_delivery != Py_None ? SHMLOG_RICH_CALLBACKS : 0);
}

/* Append a record whose objects the caller has checked: key and value
 * exact bytes (at most INT32_MAX bytes) or None, headers exact bytes (an
 * encoded section, b"" for none), timestamp -1 (the commit's time) or a
 * time in ms, partition -1 (the key's) or a partition. 0, or -1 with an
 * error (nothing appended). */
static inline int shmlog_rq_push(shmlog_rich_queue_t *q, int32_t partition, PyObject *key, PyObject *value,
                                 PyObject *headers, int64_t timestamp, PyObject *on_delivery)
{
    if (q->n == q->cap && shmlog_rq_grow(q) < 0)
        return -1;
    shmlog_rich_record_t *r = &q->recs[q->n];
    PyObject **o = &q->objs[q->n * SHMLOG_RQ_OBJS];
    if (value == Py_None) {
        r->value = NULL;
        r->value_len = -1;
    } else {
        r->value = (const uint8_t *)PyBytes_AS_STRING(value);
        r->value_len = (int32_t)PyBytes_GET_SIZE(value);
    }
    if (key == Py_None) {
        r->key = NULL;
        r->key_len = -1;
    } else {
        r->key = (const uint8_t *)PyBytes_AS_STRING(key);
        r->key_len = (int32_t)PyBytes_GET_SIZE(key);
    }
    r->headers = (const uint8_t *)PyBytes_AS_STRING(headers);
    r->header_len = (uint32_t)PyBytes_GET_SIZE(headers);
    r->timestamp = timestamp;
    r->partition = partition;
    Py_INCREF(key);
    Py_INCREF(value);
    Py_INCREF(headers);
    Py_INCREF(on_delivery);
    o[SHMLOG_RQ_KEY] = key;
    o[SHMLOG_RQ_VALUE] = value;
    o[SHMLOG_RQ_HEADERS] = headers;
    o[SHMLOG_RQ_CALLBACK] = on_delivery;
    q->flags |= shmlog_rq_record_flags(r, on_delivery);
    q->n++;
    return 0;
}

/* the type, for the module's init (messages.c) */
extern PyTypeObject shmlog_rich_queue_type;

#endif
