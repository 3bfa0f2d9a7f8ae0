/* rich_queue.c — shmlog.core._messages's producer half (see rich_queue.h):
 * a rich-queue commit (shmlog/client/rich_queue.py) reads its queued record
 * tuples into the C core's record array here, one call per commit, instead
 * of a pickle stream C would parse again; and its on_delivery callbacks are
 * called from here, each with a RecordMetadata built in C (a tuple
 * subclass, untracked by the GC like Message). Nothing here is allocated
 * per record but the objects a callback receives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "rich_queue.h"

/* A queued record is the tuple send() appends (client/rich_queue.py):
 *     (partition, key, value, headers, timestamp_ms, on_delivery)
 * partition -1: the key's; key/value bytes or None; headers an encoded
 * section (bytes, b"" for none); timestamp_ms None or -1: the commit's time. */
#define RICH_FIELDS 6

/* bytes or None -> pointer and length (-1: None); 0 or -1 with TypeError */
static int rich_bytes(PyObject *o, const uint8_t **ptr, int32_t *len, int nullable, Py_ssize_t i,
                      const char *what)
{
    if (PyBytes_CheckExact(o)) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        if (n > INT32_MAX) {
            PyErr_Format(PyExc_OverflowError, "record %zd: %s of %zd bytes", i, what, n);
            return -1;
        }
        *ptr = (const uint8_t *)PyBytes_AS_STRING(o);
        *len = (int32_t)n;
        return 0;
    }
    if (nullable && o == Py_None) {
        *ptr = NULL;
        *len = -1;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "record %zd: %s must be bytes%s, got %.100s", i, what,
                 nullable ? " or None" : "", Py_TYPE(o)->tp_name);
    return -1;
}

/* an int in [lo, hi] -> *out; -1 with an error otherwise */
static int rich_int(PyObject *o, long long lo, long long hi, long long *out, Py_ssize_t i,
                    const char *what)
{
    if (!PyLong_CheckExact(o)) {
        PyErr_Format(PyExc_TypeError, "record %zd: %s must be an int, got %.100s", i, what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "record %zd: %s out of range", i, what);
        return -1;
    }
    *out = v;
    return 0;
}

/* rich_columns(records, n, out) -> flags (SHMLOG_RICH_*): records[0:n]
 * (a list of record tuples) into out, a writable buffer of at least n
 * shmlog_rich_record_t. The pointers point into the records' bytes: valid
 * while the caller holds the list. A record that is not of the queue's
 * shape raises (TypeError, ValueError) and nothing is written for it. */
PyObject *shmlog_py_rich_columns(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "rich_columns(records: list, n, out)");
        return NULL;
    }
    PyObject *records = args[0];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > PyList_GET_SIZE(records)) {
        PyErr_Format(PyExc_ValueError, "rich_columns(): n=%zd, the list has %zd", n,
                     PyList_GET_SIZE(records));
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_WRITABLE) != 0)
        return NULL;
    PyObject *result = NULL;
    if ((size_t)view.len / sizeof(shmlog_rich_record_t) < (size_t)n) {
        PyErr_Format(PyExc_ValueError, "rich_columns(): the buffer holds fewer than %zd records", n);
        goto done;
    }
    shmlog_rich_record_t *out = view.buf;
    unsigned flags = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* items read from the list each time: a callback run by another
         * thread cannot change this list (the producer's lock), but it
         * costs nothing to not hold a stale pointer */
        PyObject *t = PyList_GET_ITEM(records, i);
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != RICH_FIELDS) {
            PyErr_Format(PyExc_TypeError, "record %zd is not a rich-queue record", i);
            goto done;
        }
        shmlog_rich_record_t *r = &out[i];
        long long part, ts;
        PyObject *key = PyTuple_GET_ITEM(t, 1);
        int32_t hl;
        if (rich_int(PyTuple_GET_ITEM(t, 0), -1, INT32_MAX, &part, i, "partition") < 0 ||
            rich_bytes(key, &r->key, &r->key_len, 1, i, "key") < 0 ||
            rich_bytes(PyTuple_GET_ITEM(t, 2), &r->value, &r->value_len, 1, i, "value") < 0 ||
            rich_bytes(PyTuple_GET_ITEM(t, 3), &r->headers, &hl, 0, i, "headers") < 0 ||
            (PyTuple_GET_ITEM(t, 4) == Py_None ? (ts = -1, 0)
                                                : rich_int(PyTuple_GET_ITEM(t, 4), -1, INT64_MAX, &ts,
                                                           i, "timestamp_ms")) < 0)
            goto done;
        if (part < 0 && key == Py_None) {
            PyErr_Format(PyExc_ValueError, "record %zd: no partition and no key", i);
            goto done;
        }
        r->partition = (int32_t)part;
        r->header_len = (uint32_t)hl;
        r->timestamp = ts;
        if (key != Py_None)
            flags |= SHMLOG_RICH_KEYS;
        if (hl)
            flags |= SHMLOG_RICH_HEADERS;
        if (ts >= 0)
            flags |= SHMLOG_RICH_TIMESTAMPS;
        if (PyTuple_GET_ITEM(t, 5) != Py_None)
            flags |= SHMLOG_RICH_CALLBACKS;
    }
    result = PyLong_FromUnsignedLong(flags);
done:
    PyBuffer_Release(&view);
    return result;
}

/* deliver(records, n, cls, topic, parts, offsets, ts_now, err) -> None:
 * the on_delivery of records[0:n], in order: a committed record's
 * (offsets[i] not all ones) callback gets (None, cls(topic, partition,
 * offset, timestamp)), its timestamp the record's own or ts_now; a record
 * not committed gets (err, None), or nothing when err is None (it stays
 * queued). parts: int32 per record, offsets: uint64
 * per record (buffers). Every callback runs once even when one raises;
 * the first exception is raised afterwards. */
PyObject *shmlog_py_deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 8 || !(PyList_CheckExact(args[0]) || Py_TYPE(args[0]) == &shmlog_rich_queue_type) ||
        !PyType_Check(args[2]) ||
        !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "deliver(records: list, n, cls: tuple subclass, topic, parts, offsets, ts_now, err)");
        return NULL;
    }
    PyObject *records = args[0], *topic = args[3], *ts_now = args[6], *err = args[7];
    /* a taken batch of the rich queue (the producer's commits), or a list
     * of record tuples */
    shmlog_rich_queue_t *batch =
        Py_TYPE(records) == &shmlog_rich_queue_type ? (shmlog_rich_queue_t *)records : NULL;
    PyTypeObject *cls = (PyTypeObject *)args[2];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > (batch ? batch->n : PyList_GET_SIZE(records))) {
        PyErr_SetString(PyExc_ValueError, "deliver(): n out of range");
        return NULL;
    }
    Py_buffer pv, ov;
    if (PyObject_GetBuffer(args[4], &pv, PyBUF_SIMPLE) != 0)
        return NULL;
    if (PyObject_GetBuffer(args[5], &ov, PyBUF_SIMPLE) != 0) {
        PyBuffer_Release(&pv);
        return NULL;
    }
    PyObject *exc_type = NULL, *exc = NULL, *tb = NULL;
    int failed = 0;
    if ((size_t)pv.len / sizeof(int32_t) < (size_t)n || (size_t)ov.len / sizeof(uint64_t) < (size_t)n) {
        PyErr_SetString(PyExc_ValueError, "deliver(): parts/offsets shorter than n");
        failed = 1;
        goto done;
    }
    const int32_t *parts = pv.buf;
    const uint64_t *offsets = ov.buf;
    int atomic_topic = shmlog_py_untracked(topic), atomic_now = shmlog_py_untracked(ts_now);
    /* a metadata tuple no callback kept (refcount 1 after the call) is
     * refilled for the next record, as zip() reuses its result tuple:
     * nobody else can see it, and its allocation is most of this loop's
     * own cost */
    PyObject *spare = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t, *cb, *ts_own = NULL;
        long long own = -1;
        if (batch) {
            cb = batch->objs[i * SHMLOG_RQ_OBJS + SHMLOG_RQ_CALLBACK];
            if (cb == Py_None)
                continue;
            own = batch->recs[i].timestamp;
            t = cb;
        } else {
            t = PyList_GET_ITEM(records, i);
            if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != RICH_FIELDS)
                continue;
            cb = PyTuple_GET_ITEM(t, 5);
            if (cb == Py_None)
                continue;
        }
        Py_INCREF(t); /* the callback may change anything but this record */
        PyObject *argv[2], *md = NULL;
        if (offsets[i] == UINT64_MAX) {
            if (err == Py_None) { /* not committed, no error: still queued */
                Py_DECREF(t);
                continue;
            }
            argv[0] = err;
            argv[1] = Py_None;
        } else {
            PyObject *ts;
            if (batch) {
                ts = own < 0 ? ts_now : (ts_own = PyLong_FromLongLong(own));
                if (ts == NULL) {
                    Py_DECREF(t);
                    failed = 1;
                    break;
                }
            } else {
                ts = PyTuple_GET_ITEM(t, 4);
                own = PyLong_CheckExact(ts) ? PyLong_AsLongLong(ts) : -1;
                if (own == -1 && PyErr_Occurred())
                    PyErr_Clear();
                if (own < 0)
                    ts = ts_now;
            }
            PyObject *p = PyLong_FromLong(parts[i]);
            PyObject *off = p ? PyLong_FromUnsignedLongLong(offsets[i]) : NULL;
            if (off != NULL) {
                md = spare;
                spare = NULL;
                if (md == NULL) {
                    md = cls->tp_alloc(cls, 4);
                    if (md != NULL) {
                        Py_INCREF(topic);
                        PyTuple_SET_ITEM(md, 0, topic);
                    }
                } else {
                    Py_CLEAR(PyTuple_GET_ITEM(md, 1));
                    Py_CLEAR(PyTuple_GET_ITEM(md, 2));
                    Py_CLEAR(PyTuple_GET_ITEM(md, 3));
                }
            }
            if (md == NULL) {
                Py_XDECREF(p);
                Py_XDECREF(off);
                Py_XDECREF(ts_own);
                Py_DECREF(t);
                failed = 1;
                break;
            }
            Py_INCREF(ts);
            PyTuple_SET_ITEM(md, 1, p);
            PyTuple_SET_ITEM(md, 2, off);
            PyTuple_SET_ITEM(md, 3, ts);
            Py_XDECREF(ts_own);
            int atomic = atomic_topic && (ts == ts_now ? atomic_now : shmlog_py_untracked(ts));
            if (atomic && PyObject_GC_IsTracked(md))
                PyObject_GC_UnTrack(md);
            else if (!atomic && !PyObject_GC_IsTracked(md))
                PyObject_GC_Track(md);
            argv[0] = Py_None;
            argv[1] = md;
        }
        PyObject *r = PyObject_Vectorcall(cb, argv, 2, NULL);
        if (md != NULL) {
            if (Py_REFCNT(md) == 1)
                spare = md;
            else
                Py_DECREF(md);
        }
        Py_DECREF(t);
        if (r == NULL) {
            if (exc_type == NULL)
                PyErr_Fetch(&exc_type, &exc, &tb);
            else
                PyErr_Clear(); /* only the first is raised */
        } else {
            Py_DECREF(r);
        }
        if (n > (batch ? batch->n : PyList_GET_SIZE(records))) /* a callback shortened it */
            n = batch ? batch->n : PyList_GET_SIZE(records);
    }
    Py_XDECREF(spare);
done:
    PyBuffer_Release(&pv);
    PyBuffer_Release(&ov);
    if (failed) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return NULL;
    }
    if (exc_type != NULL) {
        PyErr_Restore(exc_type, exc, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* first_nonempty(lists) -> the index of the first non-empty list in a list
 * of lists, or -1: the rich and keyed queues' commits ask it of the plain
 * lists (one per partition) every commit, where any() would cost a truth
 * test through the iterator protocol per partition. */
PyObject *shmlog_py_first_nonempty(PyObject *self, PyObject *lists)
{
    (void)self;
    if (!PyList_CheckExact(lists)) {
        PyErr_SetString(PyExc_TypeError, "first_nonempty(): a list of lists");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(lists);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *l = PyList_GET_ITEM(lists, i);
        if (PyList_CheckExact(l) ? PyList_GET_SIZE(l) != 0 : PyObject_IsTrue(l) != 0)
            return PyLong_FromSsize_t(i); /* (an IsTrue error: the caller looks at it) */
    }
    return PyLong_FromLong(-1);
}

/* ------------------------------------------------------------ RichQueue
 * (rich_queue.h) */

static void rq_release(PyObject **objs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n * SHMLOG_RQ_OBJS; i++)
        Py_CLEAR(objs[i]);
}

static int rq_traverse(shmlog_rich_queue_t *q, visitproc visit, void *arg)
{
    /* only a callback can be part of a cycle: the other objects are bytes
     * or None */
    for (Py_ssize_t i = 0; i < q->n; i++) {
        PyObject *cb = q->objs[i * SHMLOG_RQ_OBJS + SHMLOG_RQ_CALLBACK];
        if (cb != Py_None)
            Py_VISIT(cb);
    }
    return 0;
}

static int rq_clear(shmlog_rich_queue_t *q)
{
    Py_ssize_t n = q->n;
    /* emptied before any reference goes: a finalizer run by a release
     * sees an empty queue, not a half-released one */
    q->n = 0;
    q->flags = 0;
    rq_release(q->objs, n);
    return 0;
}

static void rq_dealloc(shmlog_rich_queue_t *q)
{
    PyObject_GC_UnTrack(q);
    rq_clear(q);
    PyMem_Free(q->recs);
    PyMem_Free(q->objs);
    PyMem_Free(q->spare_recs);
    PyMem_Free(q->spare_objs);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static Py_ssize_t rq_length(shmlog_rich_queue_t *q)
{
    return q->n;
}

/* rq[i]: the record as the tuple send()'s Python path appends:
 * (partition, key, value, header bytes, timestamp_ms or None, on_delivery) */
static PyObject *rq_item(shmlog_rich_queue_t *q, Py_ssize_t i)
{
    if (i < 0 || i >= q->n) {
        PyErr_SetString(PyExc_IndexError, "rich queue index out of range");
        return NULL;
    }
    const shmlog_rich_record_t *r = &q->recs[i];
    PyObject **o = &q->objs[i * SHMLOG_RQ_OBJS];
    PyObject *ts;
    if (r->timestamp < 0) {
        Py_INCREF(Py_None);
        ts = Py_None;
    } else {
        ts = PyLong_FromLongLong(r->timestamp);
    }
    if (ts == NULL)
        return NULL;
    PyObject *part = PyLong_FromLong(r->partition);
    if (part == NULL) {
        Py_DECREF(ts);
        return NULL;
    }
    PyObject *t = PyTuple_Pack(6, part, o[SHMLOG_RQ_KEY], o[SHMLOG_RQ_VALUE], o[SHMLOG_RQ_HEADERS], ts,
                               o[SHMLOG_RQ_CALLBACK]);
    Py_DECREF(part);
    Py_DECREF(ts);
    return t;
}

/* append(record): a record tuple of send()'s Python path, checked as
 * rich_columns checks one */
static PyObject *rq_append(shmlog_rich_queue_t *q, PyObject *t)
{
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != RICH_FIELDS) {
        PyErr_SetString(PyExc_TypeError,
                        "append(): a (partition, key, value, headers, timestamp_ms, on_delivery) tuple");
        return NULL;
    }
    Py_ssize_t i = q->n;
    long long part, ts;
    const uint8_t *ptr;
    int32_t len;
    PyObject *key = PyTuple_GET_ITEM(t, 1), *value = PyTuple_GET_ITEM(t, 2), *headers = PyTuple_GET_ITEM(t, 3);
    if (rich_int(PyTuple_GET_ITEM(t, 0), -1, INT32_MAX, &part, i, "partition") < 0 ||
        rich_bytes(key, &ptr, &len, 1, i, "key") < 0 || rich_bytes(value, &ptr, &len, 1, i, "value") < 0 ||
        rich_bytes(headers, &ptr, &len, 0, i, "headers") < 0 ||
        (PyTuple_GET_ITEM(t, 4) == Py_None
             ? (ts = -1, 0)
             : rich_int(PyTuple_GET_ITEM(t, 4), -1, INT64_MAX, &ts, i, "timestamp_ms")) < 0)
        return NULL;
    if (part < 0 && key == Py_None) {
        PyErr_Format(PyExc_ValueError, "record %zd: no partition and no key", i);
        return NULL;
    }
    if (shmlog_rq_push(q, (int32_t)part, key, value, headers, ts, PyTuple_GET_ITEM(t, 5)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static shmlog_rich_queue_t *rq_new_empty(void)
{
    return (shmlog_rich_queue_t *)shmlog_rich_queue_type.tp_alloc(&shmlog_rich_queue_type, 0);
}

/* take() -> a batch holding every queued record, the queue left empty
 * (on its spare arrays): C reads the batch's array while sends go on */
static PyObject *rq_take(shmlog_rich_queue_t *q, PyObject *unused)
{
    (void)unused;
    shmlog_rich_queue_t *b = rq_new_empty();
    if (b == NULL)
        return NULL;
    b->recs = q->recs;
    b->objs = q->objs;
    b->n = q->n;
    b->cap = q->cap;
    b->flags = q->flags;
    q->recs = q->spare_recs;
    q->objs = q->spare_objs;
    q->cap = q->spare_cap;
    q->n = 0;
    q->flags = 0;
    q->spare_recs = NULL;
    q->spare_objs = NULL;
    q->spare_cap = 0;
    return (PyObject *)b;
}

static int rq_check(PyObject *o)
{
    if (Py_TYPE(o) != &shmlog_rich_queue_type) {
        PyErr_Format(PyExc_TypeError, "a RichQueue, got %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    return 0;
}

/* recycle(batch): the batch's references released and its arrays kept
 * as this queue's spare (the larger of the two kept); the batch is left
 * empty */
static PyObject *rq_recycle(shmlog_rich_queue_t *q, PyObject *arg)
{
    if (rq_check(arg) < 0)
        return NULL;
    shmlog_rich_queue_t *b = (shmlog_rich_queue_t *)arg;
    if (b == q) {
        PyErr_SetString(PyExc_ValueError, "recycle(): a queue cannot recycle itself");
        return NULL;
    }
    rq_clear(b);
    if (b->cap > q->spare_cap) {
        PyMem_Free(q->spare_recs);
        PyMem_Free(q->spare_objs);
        q->spare_recs = b->recs;
        q->spare_objs = b->objs;
        q->spare_cap = b->cap;
    } else {
        PyMem_Free(b->recs);
        PyMem_Free(b->objs);
    }
    b->recs = NULL;
    b->objs = NULL;
    b->cap = 0;
    Py_RETURN_NONE;
}

/* putback(batch, offsets) -> how many: the batch's records whose offset
 * (uint64 per record, a buffer) is all ones, not committed, go back to the
 * front of this queue in their order, ahead of anything queued since; the
 * batch keeps the others */
static PyObject *rq_putback(shmlog_rich_queue_t *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || rq_check(args[0]) < 0)
        return nargs != 2 ? (PyErr_SetString(PyExc_TypeError, "putback(batch, offsets)"), NULL) : NULL;
    shmlog_rich_queue_t *b = (shmlog_rich_queue_t *)args[0];
    if (b == q) {
        PyErr_SetString(PyExc_ValueError, "putback(): a queue cannot take its own records back");
        return NULL;
    }
    Py_buffer ov;
    if (PyObject_GetBuffer(args[1], &ov, PyBUF_SIMPLE) != 0)
        return NULL;
    if ((size_t)ov.len / sizeof(uint64_t) < (size_t)b->n) {
        PyBuffer_Release(&ov);
        PyErr_SetString(PyExc_ValueError, "putback(): offsets shorter than the batch");
        return NULL;
    }
    const uint64_t *offsets = ov.buf;
    Py_ssize_t back = 0;
    for (Py_ssize_t i = 0; i < b->n; i++)
        back += offsets[i] == UINT64_MAX;
    if (back == 0) {
        PyBuffer_Release(&ov);
        return PyLong_FromLong(0);
    }
    Py_ssize_t cap = q->n + back;
    shmlog_rich_record_t *recs = PyMem_Malloc((size_t)cap * sizeof(*recs));
    PyObject **objs = PyMem_Malloc((size_t)cap * SHMLOG_RQ_OBJS * sizeof(*objs));
    if (recs == NULL || objs == NULL) {
        PyMem_Free(recs);
        PyMem_Free(objs);
        PyBuffer_Release(&ov);
        return PyErr_NoMemory();
    }
    /* references move (batch -> queue), none is taken or released */
    Py_ssize_t j = 0, kept = 0;
    unsigned flags = q->flags, bflags = 0;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        const shmlog_rich_record_t *r = &b->recs[i];
        unsigned f = shmlog_rq_record_flags(r, b->objs[i * SHMLOG_RQ_OBJS + SHMLOG_RQ_CALLBACK]);
        if (offsets[i] == UINT64_MAX) {
            recs[j] = *r;
            memcpy(&objs[j * SHMLOG_RQ_OBJS], &b->objs[i * SHMLOG_RQ_OBJS], SHMLOG_RQ_OBJS * sizeof(*objs));
            flags |= f;
            j++;
        } else {
            b->recs[kept] = *r;
            memmove(&b->objs[kept * SHMLOG_RQ_OBJS], &b->objs[i * SHMLOG_RQ_OBJS], SHMLOG_RQ_OBJS * sizeof(*objs));
            bflags |= f;
            kept++;
        }
    }
    PyBuffer_Release(&ov);
    if (q->n) {
        memcpy(&recs[back], q->recs, (size_t)q->n * sizeof(*recs));
        memcpy(&objs[back * SHMLOG_RQ_OBJS], q->objs, (size_t)q->n * SHMLOG_RQ_OBJS * sizeof(*objs));
    }
    PyMem_Free(q->recs);
    PyMem_Free(q->objs);
    q->recs = recs;
    q->objs = objs;
    q->cap = cap;
    q->n = cap;
    q->flags = flags;
    b->n = kept;
    b->flags = bflags;
    return PyLong_FromSsize_t(back);
}

/* nbytes(overhead) -> the bytes send() counts for the queued records:
 * key, value, header section and overhead each */
static PyObject *rq_nbytes(shmlog_rich_queue_t *q, PyObject *arg)
{
    long long overhead = PyLong_AsLongLong(arg);
    if (overhead == -1 && PyErr_Occurred())
        return NULL;
    long long nb = 0;
    for (Py_ssize_t i = 0; i < q->n; i++) {
        const shmlog_rich_record_t *r = &q->recs[i];
        nb += (r->key_len > 0 ? r->key_len : 0) + (r->value_len > 0 ? r->value_len : 0) + r->header_len + overhead;
    }
    return PyLong_FromLongLong(nb);
}

static PyObject *rq_get_address(shmlog_rich_queue_t *q, void *closure)
{
    (void)closure;
    return PyLong_FromVoidPtr(q->recs);
}

static PyObject *rq_get_flags(shmlog_rich_queue_t *q, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(q->flags);
}

static PyObject *rq_get_first_partition(shmlog_rich_queue_t *q, void *closure)
{
    (void)closure;
    if (q->n == 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(q->recs[0].partition);
}

static PyMethodDef rq_methods[] = {
    {"append", (PyCFunction)rq_append, METH_O, "append(record): a record tuple of send()'s Python path"},
    {"take", (PyCFunction)rq_take, METH_NOARGS, "take() -> a batch of every queued record; the queue empties"},
    {"recycle", (PyCFunction)rq_recycle, METH_O, "recycle(batch): release a committed batch, keep its arrays"},
    {"putback", (PyCFunction)(void (*)(void))rq_putback, METH_FASTCALL,
     "putback(batch, offsets) -> n: the batch's uncommitted records back to the queue's front"},
    {"nbytes", (PyCFunction)rq_nbytes, METH_O, "nbytes(overhead) -> the queued records' bytes as send() counts"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rq_getset[] = {
    {"address", (getter)rq_get_address, NULL, "the record array's address (C reads n records there)", NULL},
    {"flags", (getter)rq_get_flags, NULL, "SHMLOG_RICH_* of the records held", NULL},
    {"first_partition", (getter)rq_get_first_partition, NULL,
     "the oldest record's partition (-1: the key's), None when empty", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods rq_as_sequence = {
    .sq_length = (lenfunc)rq_length,
    .sq_item = (ssizeargfunc)rq_item,
};

PyTypeObject shmlog_rich_queue_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmlog.core._messages.RichQueue",
    .tp_doc = "The producer's rich queue: records in the C core's record array (csrc/rich_queue.h).",
    .tp_basicsize = sizeof(shmlog_rich_queue_t),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)rq_dealloc,
    .tp_traverse = (traverseproc)rq_traverse,
    .tp_clear = (inquiry)rq_clear,
    .tp_as_sequence = &rq_as_sequence,
    .tp_methods = rq_methods,
    .tp_getset = rq_getset,
};
