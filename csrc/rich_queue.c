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
    if (nargs != 8 || !PyList_CheckExact(args[0]) || !PyType_Check(args[2]) ||
        !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "deliver(records: list, n, cls: tuple subclass, topic, parts, offsets, ts_now, err)");
        return NULL;
    }
    PyObject *records = args[0], *topic = args[3], *ts_now = args[6], *err = args[7];
    PyTypeObject *cls = (PyTypeObject *)args[2];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > PyList_GET_SIZE(records)) {
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
        PyObject *t = PyList_GET_ITEM(records, i);
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != RICH_FIELDS)
            continue;
        PyObject *cb = PyTuple_GET_ITEM(t, 5);
        if (cb == Py_None)
            continue;
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
            PyObject *ts = PyTuple_GET_ITEM(t, 4);
            long long own = PyLong_CheckExact(ts) ? PyLong_AsLongLong(ts) : -1;
            if (own == -1 && PyErr_Occurred())
                PyErr_Clear();
            if (own < 0)
                ts = ts_now;
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
                Py_DECREF(t);
                failed = 1;
                break;
            }
            Py_INCREF(ts);
            PyTuple_SET_ITEM(md, 1, p);
            PyTuple_SET_ITEM(md, 2, off);
            PyTuple_SET_ITEM(md, 3, ts);
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
        if (n > PyList_GET_SIZE(records)) /* a callback shortened the list */
            n = PyList_GET_SIZE(records);
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
