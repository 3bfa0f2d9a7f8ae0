/* shmlog.core._messages: the consumer's Message objects built per batch in C.
 *
 * The rest of the C core is reached through cffi and never touches Python
 * objects; this small CPython extension is the one place that does, because
 * building a Message per record is the consumer's per-message cost: from
 * Python it is a call per record plus the cyclic GC scanning every fresh
 * tuple that survives in the batch list. Here a batch is one call, and a
 * Message whose fields are all atomic (str, int, bytes, None, the empty
 * headers tuple) is untracked by the GC exactly as CPython untracks such a
 * plain tuple; one that carries a headers list stays tracked.
 *
 * Header sections are parsed here too (per batch, bounds-checked on every
 * byte: the caller copies them out of shared memory before the seqlock
 * check, so they may be torn; a malformed section comes back as None and the
 * caller's validation decides).
 *
 * The producer's side (rich_columns, deliver): a rich-queue commit reads
 * its queued record tuples into the C core's record array here, one call
 * per commit, instead of a pickle stream C would parse again; and its
 * on_delivery callbacks are called from here, each with a RecordMetadata
 * built in C (a tuple subclass, untracked by the GC like Message).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>

#include "rich_record.h"

#define MESSAGE_FIELDS 7

/* A column: a list or tuple (items borrowed), or any other sequence made
 * into one. *owned is set when the caller must drop it. */
static PyObject **column(PyObject *seq, Py_ssize_t n, PyObject **owned, const char *name)
{
    *owned = NULL;
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) {
        *owned = PySequence_Fast(seq, name);
        if (*owned == NULL)
            return NULL;
        seq = *owned;
    }
    if (PySequence_Fast_GET_SIZE(seq) < n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items, fewer than the batch's %zd", name,
                     PySequence_Fast_GET_SIZE(seq), n);
        Py_CLEAR(*owned);
        return NULL;
    }
    return PySequence_Fast_ITEMS(seq);
}

static int untracked(PyObject *o)
{
    return !PyObject_IS_GC(o) || !PyObject_GC_IsTracked(o);
}

/* build(cls, topic, partition, offsets, keys, values, headers, timestamps)
 * -> list of cls instances (a tuple subclass of 7 fields). offsets: a range
 * (dense) or a sequence; keys None: every key is None; headers None: every
 * headers field is (); timestamps an int: the same for every record. */
static PyObject *build(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "build() takes 8 arguments");
        return NULL;
    }
    PyObject *cls = args[0], *topic = args[1], *partition = args[2], *offsets = args[3];
    PyObject *keys = args[4], *values = args[5], *headers = args[6], *timestamps = args[7];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "build(): cls must be a tuple subclass");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    Py_ssize_t n = PyObject_Length(values);
    if (n < 0)
        return NULL;
    PyObject *owned[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject **off_items = NULL, **key_items = NULL, **hdr_items = NULL, **ts_items = NULL;
    PyObject **val_items = NULL;
    PyObject *out = NULL, *empty = NULL;
    long long base = 0;
    int dense = 0;

    if (PyRange_Check(offsets)) {
        /* a dense run: base + i, no int object until a Message holds one */
        PyObject *start = PyObject_GetAttrString(offsets, "start");
        if (start == NULL)
            return NULL;
        base = PyLong_AsLongLong(start);
        Py_DECREF(start);
        if (base == -1 && PyErr_Occurred())
            return NULL;
        dense = 1;
    } else if ((off_items = column(offsets, n, &owned[0], "offsets")) == NULL) {
        goto done;
    }
    if ((val_items = column(values, n, &owned[1], "values")) == NULL)
        goto done;
    if (keys != Py_None && (key_items = column(keys, n, &owned[2], "keys")) == NULL)
        goto done;
    if (headers != Py_None && (hdr_items = column(headers, n, &owned[3], "headers")) == NULL)
        goto done;
    if (!PyLong_Check(timestamps) && (ts_items = column(timestamps, n, &owned[4], "timestamps")) == NULL)
        goto done;
    if ((empty = PyTuple_New(0)) == NULL)
        goto done;
    if ((out = PyList_New(n)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = type->tp_alloc(type, MESSAGE_FIELDS);
        if (m == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyObject *off = dense ? PyLong_FromLongLong(base + i) : off_items[i];
        if (off == NULL) {
            Py_DECREF(m);
            Py_CLEAR(out);
            goto done;
        }
        if (!dense)
            Py_INCREF(off);
        PyObject *fields[MESSAGE_FIELDS] = {
            topic, partition, off, key_items ? key_items[i] : Py_None, val_items[i],
            hdr_items ? hdr_items[i] : empty, ts_items ? ts_items[i] : timestamps,
        };
        int atomic = 1;
        for (int f = 0; f < MESSAGE_FIELDS; f++) {
            if (f != 2)
                Py_INCREF(fields[f]);
            PyTuple_SET_ITEM(m, f, fields[f]);
            atomic &= untracked(fields[f]);
        }
        if (atomic)
            PyObject_GC_UnTrack(m);
        PyList_SET_ITEM(out, i, m);
    }
done:
    Py_XDECREF(empty);
    for (int k = 0; k < 5; k++)
        Py_XDECREF(owned[k]);
    return out;
}

/* A zigzag varint at *pos, bounds-checked; -2 (never a valid length here)
 * when it runs past end or is too long. */
static int64_t zigzag_at(const uint8_t *p, Py_ssize_t end, Py_ssize_t *pos)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= end)
            return -2;
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80))
            return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
    }
    return -2;
}

/* One header section p[0:len] -> [(str, bytes|None), ...], or Py_None
 * (a new reference) when malformed. */
static PyObject *header_list(const uint8_t *p, Py_ssize_t len)
{
    Py_ssize_t pos = 0;
    int64_t count = zigzag_at(p, len, &pos);
    if (count < 0 || count > len)
        Py_RETURN_NONE;
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list == NULL)
        return NULL;
    for (int64_t i = 0; i < count; i++) {
        int64_t kl = zigzag_at(p, len, &pos);
        if (kl < 0 || kl > len - pos)
            goto malformed;
        PyObject *key = PyUnicode_DecodeUTF8((const char *)p + pos, (Py_ssize_t)kl, "replace");
        if (key == NULL)
            goto fail;
        pos += (Py_ssize_t)kl;
        int64_t vl = zigzag_at(p, len, &pos);
        PyObject *value;
        if (vl == -1) {
            value = Py_None;
            Py_INCREF(value);
        } else if (vl < 0 || vl > len - pos) {
            Py_DECREF(key);
            goto malformed;
        } else {
            value = PyBytes_FromStringAndSize((const char *)p + pos, (Py_ssize_t)vl);
            if (value == NULL) {
                Py_DECREF(key);
                goto fail;
            }
            pos += (Py_ssize_t)vl;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(key);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, key);
        PyTuple_SET_ITEM(pair, 1, value);
        PyList_SET_ITEM(list, (Py_ssize_t)i, pair);
    }
    return list;
malformed:
    Py_DECREF(list);
    Py_RETURN_NONE;
fail:
    Py_DECREF(list);
    return NULL;
}

/* headers(buffer, positions, lengths) -> list: per record, [] for an empty
 * section, else its parsed list, or None when malformed or out of the
 * buffer. positions/lengths: sequences of ints (bytes into buffer). */
static PyObject *headers(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "headers() takes 3 arguments");
        return NULL;
    }
    Py_ssize_t n = PyObject_Length(args[1]);
    if (n < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0)
        return NULL;
    PyObject *owned[2] = {NULL, NULL}, *out = NULL;
    PyObject **pos = column(args[1], n, &owned[0], "positions");
    PyObject **lens = pos ? column(args[2], n, &owned[1], "lengths") : NULL;
    if (lens == NULL || (out = PyList_New(n)) == NULL)
        goto done;
    const uint8_t *base = view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t p = PyLong_AsSsize_t(pos[i]), ln = PyLong_AsSsize_t(lens[i]);
        if ((p == -1 || ln == -1) && PyErr_Occurred()) {
            Py_CLEAR(out);
            goto done;
        }
        PyObject *h;
        if (ln == 0)
            h = PyList_New(0);
        else if (p < 0 || ln < 0 || p > view.len || ln > view.len - p) {
            h = Py_None;
            Py_INCREF(h);
        } else
            h = header_list(base + p, ln);
        if (h == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, h);
    }
done:
    Py_XDECREF(owned[0]);
    Py_XDECREF(owned[1]);
    PyBuffer_Release(&view);
    return out;
}

/* ------------------------------------------------- the producer's rich queue
 * A queued record is the tuple send() appends (client/rich_queue.py):
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
static PyObject *rich_columns(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
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
static PyObject *deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
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
    int atomic_topic = untracked(topic), atomic_now = untracked(ts_now);
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
            int atomic = atomic_topic && (ts == ts_now ? atomic_now : untracked(ts));
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
static PyObject *first_nonempty(PyObject *self, PyObject *lists)
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

/* Message's fields as read-only slots on its tuple items (what a struct
 * sequence does): an attribute read is then a load the interpreter
 * specialises (LOAD_ATTR_SLOT), not a property calling an itemgetter. */
#define ITEM(i) (Py_ssize_t)(offsetof(PyTupleObject, ob_item) + (i) * sizeof(PyObject *))
static PyMemberDef message_fields[MESSAGE_FIELDS] = {
    {"topic", T_OBJECT_EX, ITEM(0), READONLY, "the topic's name (str)"},
    {"partition", T_OBJECT_EX, ITEM(1), READONLY, "the partition (int)"},
    {"offset", T_OBJECT_EX, ITEM(2), READONLY, "the record's offset in its partition (int)"},
    {"key", T_OBJECT_EX, ITEM(3), READONLY, "the key (bytes or None)"},
    {"value", T_OBJECT_EX, ITEM(4), READONLY, "the value (bytes or None)"},
    {"headers", T_OBJECT_EX, ITEM(5), READONLY, "the headers: [(str, bytes or None), ...] or ()"},
    {"timestamp_ms", T_OBJECT_EX, ITEM(6), READONLY, "milliseconds since the epoch (int)"},
};

/* fields(cls): install the descriptors on cls, a tuple subclass without
 * instance dict whose instances have at least 7 items (Message.__new__
 * always makes 7). */
static PyObject *fields(PyObject *self, PyObject *cls)
{
    (void)self;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) ||
        ((PyTypeObject *)cls)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "fields(): cls must be a tuple subclass with __slots__ = ()");
        return NULL;
    }
    for (int f = 0; f < MESSAGE_FIELDS; f++) {
        PyObject *d = PyDescr_NewMember((PyTypeObject *)cls, &message_fields[f]);
        if (d == NULL)
            return NULL;
        int rc = PyObject_SetAttrString(cls, message_fields[f].name, d);
        Py_DECREF(d);
        if (rc != 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fields", fields, METH_O, "fields(cls): Message's attributes as slots on its tuple items"},
    {"build", (PyCFunction)(void (*)(void))build, METH_FASTCALL,
     "build(cls, topic, partition, offsets, keys, values, headers, timestamps) -> list"},
    {"headers", (PyCFunction)(void (*)(void))headers, METH_FASTCALL,
     "headers(buffer, positions, lengths) -> list of header lists (None: malformed)"},
    {"first_nonempty", first_nonempty, METH_O,
     "first_nonempty(lists) -> index of the first non-empty list, or -1"},
    {"rich_columns", (PyCFunction)(void (*)(void))rich_columns, METH_FASTCALL,
     "rich_columns(records, n, out) -> flags: queued rich records into the C core's record array"},
    {"deliver", (PyCFunction)(void (*)(void))deliver, METH_FASTCALL,
     "deliver(records, n, cls, topic, parts, offsets, ts_now, err): the records' on_delivery calls"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmlog.core._messages",
    "Message objects and header lists per batch; the producer's rich-queue records and callbacks.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__messages(void)
{
    return PyModule_Create(&module);
}
