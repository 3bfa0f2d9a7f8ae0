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
 * The module's producer half (the rich queue's records and callbacks) is
 * csrc/rich_queue.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>

#include "rich_queue.h"

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
            atomic &= shmlog_py_untracked(fields[f]);
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
    {"first_nonempty", shmlog_py_first_nonempty, METH_O,
     "first_nonempty(lists) -> index of the first non-empty list, or -1"},
    {"rich_columns", (PyCFunction)(void (*)(void))shmlog_py_rich_columns, METH_FASTCALL,
     "rich_columns(records, n, out) -> flags: queued rich records into the C core's record array"},
    {"deliver", (PyCFunction)(void (*)(void))shmlog_py_deliver, METH_FASTCALL,
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
    if (PyType_Ready(&shmlog_rich_queue_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&shmlog_rich_queue_type);
    if (PyModule_AddObject(m, "RichQueue", (PyObject *)&shmlog_rich_queue_type) < 0) {
        Py_DECREF(&shmlog_rich_queue_type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
