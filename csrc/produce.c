/* shmlog.core._produce: hand a zero-copy run of records to a Kafka
 * producer's produce(), one C loop per run instead of a Python loop.
 *
 * The mirror (shmlog/bridge/mirror_out.py) reads a partition as a
 * MessageView: values and keys stay in the pinned mapping, addressed by
 * position. Kafka clients take bytes, so each record's value and key become
 * a bytes object here for the one produce() call that copies them into the
 * client's queue, and are dropped at once: no list of a batch's values is
 * ever built, and the allocator hands the same block back record after
 * record. The remote partition is either the local one (counts match) or
 * Kafka's murmur2 placement of the key, hashed here from the mapping.
 *
 * Like messages.c this uses the CPython API; it never maps, writes or
 * keeps anything: positions are bounds-checked against the buffer it is
 * handed, and nothing outlives the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "partitioner.h"

/* produce()'s positional order: (topic, value, key, partition, on_delivery,
 * callback, timestamp, headers) */
#define PRODUCE_ARGS 8

typedef struct {
    Py_buffer data, vpos, vlen, kpos, klen, ts;
} run_buffers_t;

static void release(run_buffers_t *b)
{
    Py_buffer *all[] = {&b->data, &b->vpos, &b->vlen, &b->kpos, &b->klen, &b->ts};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i]->obj != NULL)
            PyBuffer_Release(all[i]);
}

/* a column of n items of `size` bytes (array('Q'), array('i'), ...) */
static int column(PyObject *o, Py_buffer *b, Py_ssize_t size, Py_ssize_t n, const char *name)
{
    if (PyObject_GetBuffer(o, b, PyBUF_SIMPLE) != 0)
        return -1;
    if (b->len < size * n) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, fewer than %zd records need", name, b->len,
                     size * n);
        return -1;
    }
    return 0;
}

/* base + pos for len bytes inside the buffer, or NULL (ValueError set) */
static const uint8_t *field(const Py_buffer *data, uint64_t pos, int32_t len, Py_ssize_t i,
                            const char *name)
{
    if (pos > (uint64_t)data->len || (uint64_t)len > (uint64_t)data->len - pos) {
        PyErr_Format(PyExc_ValueError, "record %zd: %s at %llu (+%d bytes) lies outside the buffer", i,
                     name, (unsigned long long)pos, (int)len);
        return NULL;
    }
    return (const uint8_t *)data->buf + pos;
}

/* the remote partition of record i: the local one, or murmur2(key) % rn
 * (a null key: the local partition % rn, as the mirror documents) */
static int remote_partition(const run_buffers_t *b, Py_ssize_t i, long partition, long rn)
{
    if (rn <= 0)
        return (int)partition;
    int32_t kl = ((const int32_t *)b->klen.buf)[i];
    if (kl < 0)
        return (int)(partition % rn);
    const uint8_t *k = field(&b->data, ((const uint64_t *)b->kpos.buf)[i], kl, i, "key");
    if (k == NULL)
        return -1;
    return (int)(((uint32_t)shmlog_murmur2(k, (size_t)kl) & 0x7fffffffu) % (uint32_t)rn);
}

static PyObject *bytes_at(const Py_buffer *data, const void *pos_col, const void *len_col, Py_ssize_t i,
                          const char *name)
{
    int32_t len = ((const int32_t *)len_col)[i];
    if (len < 0)
        Py_RETURN_NONE;
    const uint8_t *p = field(data, ((const uint64_t *)pos_col)[i], len, i, name);
    return p == NULL ? NULL : PyBytes_FromStringAndSize((const char *)p, len);
}

/* produce_run(produce, topic, buffer, value_pos, value_lens, key_pos,
 *             key_lens, timestamps, headers, partition, remote_partitions,
 *             lo, start, hi, on_delivery) -> (reached, callbacks)
 *
 * Produces records [start, hi) of the columns. on_delivery goes on the last
 * record of [lo, hi) of each remote partition (librdkafka keeps order per
 * partition, so its report covers the earlier ones); `callbacks` is how
 * many remote partitions [lo, hi) spans, whatever start is. headers: None,
 * or a list of per-record header lists. remote_partitions 0: every record
 * goes to `partition`. `reached` is hi, or the record at which produce()
 * raised BufferError (its queue is full; the error is cleared so the caller
 * can wait and call again from there). Any other error propagates. */
static PyObject *produce_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "produce_run() takes 15 arguments");
        return NULL;
    }
    PyObject *produce = args[0], *topic = args[1], *headers = args[8], *on_delivery = args[14];
    long partition = PyLong_AsLong(args[9]), rn = PyLong_AsLong(args[10]);
    Py_ssize_t lo = PyLong_AsSsize_t(args[11]), start = PyLong_AsSsize_t(args[12]);
    Py_ssize_t hi = PyLong_AsSsize_t(args[13]);
    if (PyErr_Occurred())
        return NULL;
    if (lo < 0 || start < lo || hi < start || partition < 0 || rn < 0) {
        PyErr_SetString(PyExc_ValueError, "produce_run(): need 0 <= lo <= start <= hi and partitions >= 0");
        return NULL;
    }
    if (headers != Py_None && (!PyList_CheckExact(headers) || PyList_GET_SIZE(headers) < hi)) {
        PyErr_SetString(PyExc_ValueError, "produce_run(): headers must be None or a list of every record's");
        return NULL;
    }
    run_buffers_t b = {0};
    PyObject *out = NULL, *part_obj = NULL, *ts_obj = NULL;
    int *last = NULL;
    long nparts = rn > 0 ? rn : partition + 1;
    if (PyObject_GetBuffer(args[2], &b.data, PyBUF_SIMPLE) != 0 ||
        column(args[3], &b.vpos, 8, hi, "value_pos") || column(args[4], &b.vlen, 4, hi, "value_lens") ||
        column(args[5], &b.kpos, 8, hi, "key_pos") || column(args[6], &b.klen, 4, hi, "key_lens") ||
        column(args[7], &b.ts, 8, hi, "timestamps"))
        goto done;
    /* the last record of [lo, hi) per remote partition: one int per
     * partition for the call, not per record */
    last = PyMem_Malloc((size_t)nparts * sizeof(*last));
    if (last == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (long q = 0; q < nparts; q++)
        last[q] = -1;
    Py_ssize_t callbacks = 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        int q = remote_partition(&b, i, partition, rn);
        if (q < 0)
            goto done;
        callbacks += last[q] < 0;
        last[q] = (int)i;
    }
    const int64_t *ts = b.ts.buf;
    int64_t ts_now = 0;
    int part_now = -1;
    Py_ssize_t i = start;
    for (; i < hi; i++) {
        int q = remote_partition(&b, i, partition, rn);
        if (q < 0)
            goto done;
        if (q != part_now) {
            Py_XSETREF(part_obj, PyLong_FromLong(q));
            if (part_obj == NULL)
                goto done;
            part_now = q;
        }
        /* records of a batch mostly share their millisecond */
        if (ts_obj == NULL || ts[i] != ts_now) {
            Py_XSETREF(ts_obj, PyLong_FromLongLong(ts[i]));
            if (ts_obj == NULL)
                goto done;
            ts_now = ts[i];
        }
        PyObject *value = bytes_at(&b.data, b.vpos.buf, b.vlen.buf, i, "value");
        if (value == NULL)
            goto done;
        PyObject *key = bytes_at(&b.data, b.kpos.buf, b.klen.buf, i, "key");
        if (key == NULL) {
            Py_DECREF(value);
            goto done;
        }
        PyObject *h = headers == Py_None ? Py_None : PyList_GET_ITEM(headers, i);
        if (h != Py_None && PyList_CheckExact(h) && PyList_GET_SIZE(h) == 0)
            h = Py_None;
        PyObject *argv[PRODUCE_ARGS] = {
            topic, value, key, part_obj, last[q] == i ? on_delivery : Py_None, Py_None, ts_obj, h,
        };
        PyObject *r = PyObject_Vectorcall(produce, argv, PRODUCE_ARGS, NULL);
        Py_DECREF(value);
        Py_DECREF(key);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_BufferError))
                goto done;
            PyErr_Clear(); /* the client's queue is full: the caller waits and resumes at i */
            break;
        }
        Py_DECREF(r);
    }
    out = Py_BuildValue("(nn)", i, callbacks);
done:
    PyMem_Free(last);
    Py_XDECREF(part_obj);
    Py_XDECREF(ts_obj);
    release(&b);
    return out;
}

static PyMethodDef methods[] = {
    {"produce_run", (PyCFunction)(void (*)(void))produce_run, METH_FASTCALL,
     "produce_run(produce, topic, buffer, value_pos, value_lens, key_pos, key_lens, timestamps, "
     "headers, partition, remote_partitions, lo, start, hi, on_delivery) -> (reached, callbacks)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmlog.core._produce",
    "A zero-copy run of records handed to a Kafka producer's produce(), one C loop per run.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__produce(void)
{
    return PyModule_Create(&module);
}
