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
    __typeof__(shmlog_keyed_append) *keyed_append;
    __typeof__(shmlog_keyed_append_one) *keyed_append_one;
    __typeof__(shmlog_rich_append) *rich_append;
} core;

#define CORE_FUNCTIONS 6

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

/* bind(set_block_hook, append_one, append_pickled, keyed_append,
 *      keyed_append_one, rich_append): the core functions' addresses */
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
    core.keyed_append = (__typeof__(core.keyed_append))f[3];
    core.keyed_append_one = (__typeof__(core.keyed_append_one))f[4];
    core.rich_append = (__typeof__(core.rich_append))f[5];
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

/* n lengths (int32, -1 allowed where nullable) whose non-negative sum must
 * fit the blob they index; -1 with ValueError otherwise */
static int lengths_fit(const char *lens, Py_ssize_t lens_bytes, Py_ssize_t n, Py_ssize_t blob,
                       int nullable, const char *name)
{
    if (lens_bytes != n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_Format(PyExc_ValueError, "%s lengths: %zd bytes for %zd records", name, lens_bytes, n);
        return -1;
    }
    const int32_t *l = (const int32_t *)lens;
    Py_ssize_t sum = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, l + i, sizeof v); /* a bytes object's data is not promised 4-aligned */
        if (v < (nullable ? -1 : 0)) {
            PyErr_Format(PyExc_ValueError, "%s length %d of record %zd", name, (int)v, i);
            return -1;
        }
        if (v > 0)
            sum += v;
    }
    if (sum > blob) {
        PyErr_Format(PyExc_ValueError, "%s lengths add up to %zd, the blob holds %zd", name, sum, blob);
        return -1;
    }
    return 0;
}

/* keyed_append(logs, slots, nparts, values, value_lens, keys, key_lens, n,
 *              timestamp, producer_id, producer_seq, timeout_ns, ends,
 *              failed) -> n or -errno: shmlog_keyed_append; logs, slots,
 * ends and failed are addresses of the caller's arrays, the rest bytes */
static PyObject *keyed_append(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *logs, *slots, *ends, *failed;
    int nparts, n;
    const char *values, *vlens, *keys, *klens;
    Py_ssize_t values_len, vlens_len, keys_len, klens_len;
    int64_t ts;
    uint64_t pid, pseq, timeout;
    if (bound() || nargs_is(nargs, 14, "keyed_append") || arg_ptr(args[0], &logs) ||
        arg_ptr(args[1], &slots) || arg_int(args[2], &nparts) ||
        arg_bytes(args[3], &values, &values_len, "values") ||
        arg_bytes(args[4], &vlens, &vlens_len, "value_lens") ||
        arg_bytes(args[5], &keys, &keys_len, "keys") ||
        arg_bytes(args[6], &klens, &klens_len, "key_lens") || arg_int(args[7], &n) ||
        arg_i64(args[8], &ts) || arg_u64(args[9], &pid) || arg_u64(args[10], &pseq) ||
        arg_u64(args[11], &timeout) || arg_ptr(args[12], &ends) || arg_ptr(args[13], &failed))
        return NULL;
    if (!logs || !slots || !ends || !failed || nparts <= 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "keyed_append(): null arrays, no partitions or no records");
        return NULL;
    }
    if (lengths_fit(vlens, vlens_len, n, values_len, 1, "value") ||
        lengths_fit(klens, klens_len, n, keys_len, 0, "key"))
        return NULL;
    enter();
    int64_t rc = core.keyed_append(logs, slots, (uint32_t)nparts, values, (const int32_t *)vlens, keys,
                                   (const int32_t *)klens, (uint32_t)n, ts, pid, (uint32_t)pseq, timeout,
                                   ends, failed);
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
     "bind(set_block_hook, append_one, append_pickled, keyed_append, keyed_append_one, "
     "rich_append): the core functions' addresses"},
    {"append_one", (PyCFunction)(void (*)(void))append_one, METH_FASTCALL,
     "append_one(log, slot, value, timestamp, producer_id, producer_seq, timeout_ns) -> offset or -errno"},
    {"append_pickled", (PyCFunction)(void (*)(void))append_pickled, METH_FASTCALL,
     "append_pickled(log, slot, stream, max_value, timestamp, producer_id, producer_seq, timeout_ns) "
     "-> base offset or -errno"},
    {"keyed_append", (PyCFunction)(void (*)(void))keyed_append, METH_FASTCALL,
     "keyed_append(logs, slots, nparts, values, value_lens, keys, key_lens, n, timestamp, producer_id, "
     "producer_seq, timeout_ns, ends, failed) -> n or -errno"},
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
