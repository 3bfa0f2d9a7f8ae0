/* shmlog.core._commit: the producer's commit crossings, made holding the GIL.
 *
 * cffi releases the GIL around every call. A producer's commit takes a few
 * microseconds and does not block, but the release is a door: any other
 * thread of the process that waits for the GIL (the producer's linger
 * flusher, woken for each new batch; an application thread) takes it at
 * every commit, and the producer then waits to get it back. Streaming to
 * many partitions (a frame every ~30 messages) that hand-over, two futex
 * syscalls and a context switch each way, cost half the producer's speed
 * (bench/send_forms_bench.py, 256 partitions). Here the same core functions
 * are called with the GIL held; the core calls this module's hook
 * (shmlog_set_block_hook, log.h) right before it would sleep (a chunk to
 * rotate, no space, the budget) or populate a chunk's pages, and only then
 * is the GIL released, until the call returns. Other threads still run
 * whenever the producer waits, and at the interpreter's switch interval.
 *
 * The core lives in the cffi module; its functions are reached through the
 * addresses shmlog/core/commit.py binds once at import. Pointer arguments
 * are addresses (ints) of the caller's cffi objects, which the caller keeps
 * alive; bytes arguments are checked against the lengths they must hold.
 * Nothing here allocates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "keyed.h"
#include "log.h"

static struct {
    __typeof__(shmlog_set_block_hook) *set_hook;
    __typeof__(shmlog_log_append_one) *append_one;
    __typeof__(shmlog_log_append_pickled) *append_pickled;
    __typeof__(shmlog_keyed_append_one) *keyed_append_one;
    __typeof__(shmlog_rich_append) *rich_append;
} core;

#define CORE_FUNCTIONS 5

/* the GIL this thread gave up in the hook, during the current call */
static __thread PyThreadState *released;

static void release_gil(void)
{
    released = PyEval_SaveThread();
}

static void enter(void)
{
    core.set_hook(release_gil);
}

static void leave(void)
{
    core.set_hook(NULL);
    if (released != NULL) {
        PyThreadState *ts = released;
        released = NULL;
        PyEval_RestoreThread(ts);
    }
}

static int bound(void)
{
    if (core.set_hook == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shmlog.core._commit is not bound to the core (bind())");
        return -1;
    }
    return 0;
}

/* Argument conversions: each returns -1 with an exception set. */
static int arg_ptr(PyObject *o, void **out)
{
    *out = PyLong_AsVoidPtr(o);
    return *out == NULL && PyErr_Occurred() ? -1 : 0;
}

static int arg_i64(PyObject *o, int64_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int arg_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLongMask(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int arg_int(PyObject *o, int *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "an int32 argument out of range");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int arg_bytes(PyObject *o, const char **ptr, Py_ssize_t *len, const char *name)
{
    if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes, got %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    *ptr = PyBytes_AS_STRING(o);
    *len = PyBytes_GET_SIZE(o);
    return 0;
}

static int nargs_is(Py_ssize_t nargs, Py_ssize_t want, const char *name)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
    return -1;
}

/* bind(set_block_hook, append_one, append_pickled, keyed_append_one,
 *      rich_append): the core functions' addresses */
static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs_is(nargs, CORE_FUNCTIONS, "bind"))
        return NULL;
    void *f[CORE_FUNCTIONS];
    for (Py_ssize_t i = 0; i < CORE_FUNCTIONS; i++)
        if (arg_ptr(args[i], &f[i]))
            return NULL;
    for (Py_ssize_t i = 0; i < CORE_FUNCTIONS; i++)
        if (f[i] == NULL) {
            PyErr_SetString(PyExc_ValueError, "bind(): a null function address");
            return NULL;
        }
    core.set_hook = (__typeof__(core.set_hook))f[0];
    core.append_one = (__typeof__(core.append_one))f[1];
    core.append_pickled = (__typeof__(core.append_pickled))f[2];
    core.keyed_append_one = (__typeof__(core.keyed_append_one))f[3];
    core.rich_append = (__typeof__(core.rich_append))f[4];
    Py_RETURN_NONE;
}

/* append_one(log, slot, value, timestamp, producer_id, producer_seq,
 *            timeout_ns) -> offset or -errno */
static PyObject *append_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *log;
    int slot;
    const char *value;
    Py_ssize_t vlen;
    int64_t ts;
    uint64_t pid, pseq, timeout;
    if (bound() || nargs_is(nargs, 7, "append_one") || arg_ptr(args[0], &log) ||
        arg_int(args[1], &slot) || arg_bytes(args[2], &value, &vlen, "value") ||
        arg_i64(args[3], &ts) || arg_u64(args[4], &pid) || arg_u64(args[5], &pseq) ||
        arg_u64(args[6], &timeout))
        return NULL;
    if (log == NULL || vlen > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "append_one(): no log, or a value above 2 GiB");
        return NULL;
    }
    enter();
    int64_t rc = core.append_one(log, slot, value, (int32_t)vlen, ts, pid, (uint32_t)pseq, timeout);
    leave();
    return PyLong_FromLongLong(rc);
}

/* append_pickled(log, slot, stream, max_value, timestamp, producer_id,
 *                producer_seq, timeout_ns) -> base offset or -errno */
static PyObject *append_pickled(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *log;
    int slot, max_value;
    int64_t ts;
    uint64_t pid, pseq, timeout;
    if (bound() || nargs_is(nargs, 8, "append_pickled") || arg_ptr(args[0], &log) ||
        arg_int(args[1], &slot) || arg_int(args[3], &max_value) || arg_i64(args[4], &ts) ||
        arg_u64(args[5], &pid) || arg_u64(args[6], &pseq) || arg_u64(args[7], &timeout))
        return NULL;
    if (log == NULL) {
        PyErr_SetString(PyExc_ValueError, "append_pickled(): no log");
        return NULL;
    }
    Py_buffer stream;
    if (PyObject_GetBuffer(args[2], &stream, PyBUF_SIMPLE) != 0)
        return NULL;
    enter();
    int64_t rc = core.append_pickled(log, slot, stream.buf, (size_t)stream.len, max_value, ts, pid,
                                     (uint32_t)pseq, timeout);
    leave();
    PyBuffer_Release(&stream);
    return PyLong_FromLongLong(rc);
}

/* keyed_queue_append(logs, slots, nparts, queue, n, records, capacity,
 *                    timestamp, producer_id, producer_seq, timeout_ns,
 *                    ends, failed) -> n / 2 or -errno: the producer's keyed
 * queue (a list of key, value, key, value, ... bytes) up to item n, read
 * into the records array (`capacity` shmlog_rich_record_t at address
 * `records`, pointing into the items' bytes) and appended by
 * shmlog_rich_append, each key hashed to its partition. The queue's
 * Python side makes no joined copy and no length columns: per record, two
 * pointers and two lengths are written here. The caller holds the list,
 * and removes the items only after the call. */
static PyObject *keyed_queue_append(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *logs, *slots, *recs_at, *ends, *failed;
    int nparts, n, capacity;
    int64_t ts;
    uint64_t pid, pseq, timeout;
    if (bound() || nargs_is(nargs, 13, "keyed_queue_append") || arg_ptr(args[0], &logs) ||
        arg_ptr(args[1], &slots) || arg_int(args[2], &nparts) || arg_int(args[4], &n) ||
        arg_ptr(args[5], &recs_at) || arg_int(args[6], &capacity) || arg_i64(args[7], &ts) ||
        arg_u64(args[8], &pid) || arg_u64(args[9], &pseq) || arg_u64(args[10], &timeout) ||
        arg_ptr(args[11], &ends) || arg_ptr(args[12], &failed))
        return NULL;
    PyObject *queue = args[3];
    if (!PyList_CheckExact(queue)) {
        PyErr_SetString(PyExc_TypeError, "keyed_queue_append(): the queue must be a list");
        return NULL;
    }
    if (!logs || !slots || !recs_at || !ends || !failed || nparts <= 0 || n <= 0 || n % 2 ||
        n > PyList_GET_SIZE(queue) || n / 2 > capacity) {
        PyErr_Format(PyExc_ValueError,
                     "keyed_queue_append(): %d items of a queue of %zd (an even count), %d records of room",
                     n, PyList_GET_SIZE(queue), capacity);
        return NULL;
    }
    shmlog_rich_record_t *recs = recs_at;
    PyObject **items = PySequence_Fast_ITEMS(queue);
    for (int i = 0; i < n / 2; i++) {
        PyObject *k = items[2 * i], *v = items[2 * i + 1];
        if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v)) {
            PyErr_Format(PyExc_TypeError, "keyed queue record %d: key and value must be bytes", i);
            return NULL;
        }
        Py_ssize_t kl = PyBytes_GET_SIZE(k), vl = PyBytes_GET_SIZE(v);
        if (kl > INT32_MAX || vl > INT32_MAX) {
            PyErr_Format(PyExc_OverflowError, "keyed queue record %d: above 2 GiB", i);
            return NULL;
        }
        shmlog_rich_record_t *r = &recs[i];
        r->key = (const uint8_t *)PyBytes_AS_STRING(k);
        r->key_len = (int32_t)kl;
        r->value = (const uint8_t *)PyBytes_AS_STRING(v);
        r->value_len = (int32_t)vl;
        r->headers = NULL;
        r->header_len = 0;
        r->timestamp = -1;
        r->partition = -1;
    }
    enter();
    int64_t rc = core.rich_append(logs, slots, (uint32_t)nparts, recs, (uint32_t)(n / 2), SHMLOG_RICH_KEYS,
                                  ts, pid, (uint32_t)pseq, timeout, ends, failed, NULL, NULL);
    leave();
    return PyLong_FromLongLong(rc);
}

/* keyed_append_one(log, slot, key, value, timestamp, producer_id,
 *                  producer_seq, timeout_ns) -> offset or -errno */
static PyObject *keyed_append_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *log;
    int slot;
    const char *key, *value;
    Py_ssize_t klen, vlen;
    int64_t ts;
    uint64_t pid, pseq, timeout;
    if (bound() || nargs_is(nargs, 8, "keyed_append_one") || arg_ptr(args[0], &log) ||
        arg_int(args[1], &slot) || arg_bytes(args[2], &key, &klen, "key") ||
        arg_bytes(args[3], &value, &vlen, "value") || arg_i64(args[4], &ts) ||
        arg_u64(args[5], &pid) || arg_u64(args[6], &pseq) || arg_u64(args[7], &timeout))
        return NULL;
    if (log == NULL || klen > INT32_MAX || vlen > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "keyed_append_one(): no log, or a key or value above 2 GiB");
        return NULL;
    }
    enter();
    int64_t rc = core.keyed_append_one(log, slot, key, (int32_t)klen, value, (int32_t)vlen, ts, pid,
                                       (uint32_t)pseq, timeout);
    leave();
    return PyLong_FromLongLong(rc);
}

/* rich_append(logs, slots, nparts, records, n, flags, timestamp,
 *             producer_id, producer_seq, timeout_ns, ends, failed,
 *             out_parts, offsets) -> n or -errno: shmlog_rich_append, every
 * pointer an address (out_parts and offsets may be 0); the first n offsets
 * are set to all ones (not committed) before C writes those it commits */
static PyObject *rich_append(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *logs, *slots, *recs, *ends, *failed, *out_parts, *offsets;
    int nparts, n, flags;
    int64_t ts;
    uint64_t pid, pseq, timeout;
    if (bound() || nargs_is(nargs, 14, "rich_append") || arg_ptr(args[0], &logs) ||
        arg_ptr(args[1], &slots) || arg_int(args[2], &nparts) || arg_ptr(args[3], &recs) ||
        arg_int(args[4], &n) || arg_int(args[5], &flags) || arg_i64(args[6], &ts) ||
        arg_u64(args[7], &pid) || arg_u64(args[8], &pseq) || arg_u64(args[9], &timeout) ||
        arg_ptr(args[10], &ends) || arg_ptr(args[11], &failed) || arg_ptr(args[12], &out_parts) ||
        arg_ptr(args[13], &offsets))
        return NULL;
    if (!logs || !slots || !recs || !ends || !failed || nparts <= 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "rich_append(): null arrays, no partitions or no records");
        return NULL;
    }
    /* a record not committed keeps its entry: NOT_COMMITTED until C writes it */
    if (offsets != NULL)
        memset(offsets, 0xff, (size_t)n * sizeof(uint64_t));
    enter();
    int64_t rc = core.rich_append(logs, slots, (uint32_t)nparts, recs, (uint32_t)n, (uint32_t)flags, ts,
                                  pid, (uint32_t)pseq, timeout, ends, failed, out_parts, offsets);
    leave();
    return PyLong_FromLongLong(rc);
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(set_block_hook, append_one, append_pickled, keyed_append_one, "
     "rich_append): the core functions' addresses"},
    {"append_one", (PyCFunction)(void (*)(void))append_one, METH_FASTCALL,
     "append_one(log, slot, value, timestamp, producer_id, producer_seq, timeout_ns) -> offset or -errno"},
    {"append_pickled", (PyCFunction)(void (*)(void))append_pickled, METH_FASTCALL,
     "append_pickled(log, slot, stream, max_value, timestamp, producer_id, producer_seq, timeout_ns) "
     "-> base offset or -errno"},
    {"keyed_queue_append", (PyCFunction)(void (*)(void))keyed_queue_append, METH_FASTCALL,
     "keyed_queue_append(logs, slots, nparts, queue, n, records, capacity, timestamp, producer_id, "
     "producer_seq, timeout_ns, ends, failed) -> records or -errno"},
    {"keyed_append_one", (PyCFunction)(void (*)(void))keyed_append_one, METH_FASTCALL,
     "keyed_append_one(log, slot, key, value, timestamp, producer_id, producer_seq, timeout_ns) "
     "-> offset or -errno"},
    {"rich_append", (PyCFunction)(void (*)(void))rich_append, METH_FASTCALL,
     "rich_append(logs, slots, nparts, records, n, flags, timestamp, producer_id, producer_seq, "
     "timeout_ns, ends, failed, out_parts, offsets) -> n or -errno"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmlog.core._commit",
    "The producer's commit crossings into the C core, made holding the GIL unless the core must wait.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__commit(void)
{
    return PyModule_Create(&module);
}
