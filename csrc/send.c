/* shmlog.core._send: Producer.send()'s fast branches in C.
 *
 * A send() is a few list appends (shmlog/client/producer.py explains the
 * queues); in Python the call with keyword arguments, the dict lookup and
 * the class checks cost more than the appends themselves. Here the same
 * branches run as one C call:
 *
 *   - a bytes value, no key: appended to the partition's plain list (the
 *     sticky partition, or the one given);
 *   - a bytes value with a bytes key: key and value appended to the
 *     topic's keyed queue (hashed per commit in csrc/keyed.c);
 *   - any other form whose parts pass the same checks as in Python
 *     (headers equal to the last list encoded, timestamp_ms an int in
 *     range, on_delivery): one record tuple appended to the rich queue.
 *
 * Every decision that is not an append stays in Python and is called
 * from here exactly where producer.py's _send_py calls it: a lone message
 * for a waiting reader (_send_one, _send_keyed_one), a full batch or a
 * hungry reader (_commit_plain, _commit_keyed, _rich_queued), a new
 * batch's flusher wake. Anything else - an unknown topic, a value that
 * is not bytes, a bad argument, a pending asynchronous error, an argument
 * spelled in a way this parser does not take - goes to _send_py whole,
 * with the caller's arguments unchanged, so its errors and its behaviour
 * are the Python code's own. Nothing is appended before such a fallback.
 *
 * Thread safety: the appends below run with the GIL held and without any
 * call that could release it between the checks and the append (no
 * Python code, no allocation that could run the GC's finalizers), which
 * is at least as strong as the atomic list.append / list += the Python
 * code relies on. Committers take the producer's lock and commit a prefix
 * of a list, so an append that lands meanwhile is never lost or
 * reordered. The two appends of a keyed record (key, then value) run
 * back to back under the GIL: no other thread's pair lands between them.
 *
 * Per-topic state that both sides use lives in _SendState (the base of
 * producer.py's _TopicState): scalar fields are C members that Python
 * reads and writes as attributes, and the per-partition numbers are
 * array.array objects whose buffers this module holds (so they cannot be
 * resized under it) and reads through plain pointers. The hungry flags
 * are read from the partition headers in shared memory, through buffers
 * of the mappings held from _bind() until _unbind() (close()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030A0000
/* Python 3.9 (requires-python >= 3.9) has neither Py_NewRef nor
 * PyModule_AddObjectRef (both 3.10) */
static inline PyObject *Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

#include "partitioner.h"
#include "rich_queue.h"

/* ------------------------------------------------------------ rules */

/* commit_rules.py's numbers, handed over once by set_rules() so Python
 * stays their one source */
static struct {
    double lone_after, hungry_rate, stream_gap;
    long long record_overhead;
    Py_ssize_t hungry_word, bell_word; /* uint32 index of data_hungry / bell_hungry */
    int ready;
} rules;

/* time.perf_counter() (and time.monotonic(): both are CLOCK_MONOTONIC on
 * Linux), computed as CPython does, so values compare with the ones
 * Python stores */
static double clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (ns % 1000000000 == 0)
        return (double)(ns / 1000000000);
    return (double)ns / 1e9;
}

/* the timing rules' clock (commit_rules._clock): C's own, unless
 * set_clock() handed a Python callable (bench/send_forms_instr.py slows
 * the rules' clock under callgrind, so they batch as at full speed) */
static PyObject *rule_clock;

/* (a Python clock may let another thread run between a check and its
 * append: only a single-threaded bench sets one) */
static double rule_now(void)
{
    if (rule_clock == NULL)
        return clock_now();
    PyObject *r = PyObject_CallNoArgs(rule_clock);
    double t = r == NULL ? -1.0 : PyFloat_AsDouble(r);
    Py_XDECREF(r);
    if (t == -1.0 && PyErr_Occurred()) {
        PyErr_WriteUnraisable(rule_clock);
        return clock_now();
    }
    return t;
}

/* ------------------------------------------------------------ _SendState */

typedef struct {
    PyObject_HEAD
    /* lists, as in producer.py: plain (one list per partition), keyed
     * queue, rich queue */
    PyObject *plain, *kq, *rq;
    /* the last header list send() encoded, its bytes */
    PyObject *h_last, *h_enc;
    /* array.array per partition, held through buffers below */
    PyObject *plain_bytes, *plain_since, *next_hungry, *hungry_tokens, *tokens_at;
    /* ints that Python reads per message (shmlog.aio's send): objects, so
     * its attribute reads stay specialized (see state_members) */
    PyObject *max_message, *nparts_obj;
    long long h_extra, limit, kq_limit, rq_limit, rq_bytes, kq_bytes;
    double kq_since, kq_at, kq_next;
    int sticky, key_p, nparts;
    int bound; /* buffers below valid: _bind() done, _unbind() not yet */
    Py_buffer b_plain_bytes, b_plain_since, b_next_hungry, b_hungry_tokens, b_tokens_at;
    Py_buffer *b_regions; /* one per partition, over its header mapping */
    Py_buffer b_bell;
    volatile uint32_t **hungry; /* per partition: its header's data_hungry */
    volatile uint32_t *bell;    /* the topic doorbell's bell_hungry */
} SendState;

static void state_release(SendState *s)
{
    if (!s->bound)
        return;
    s->bound = 0;
    Py_buffer *arrays[] = {&s->b_plain_bytes, &s->b_plain_since, &s->b_next_hungry, &s->b_hungry_tokens,
                           &s->b_tokens_at, &s->b_bell};
    for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++)
        if (arrays[i]->obj != NULL)
            PyBuffer_Release(arrays[i]);
    if (s->b_regions != NULL) {
        for (int p = 0; p < s->nparts; p++)
            if (s->b_regions[p].obj != NULL)
                PyBuffer_Release(&s->b_regions[p]);
        PyMem_Free(s->b_regions);
        s->b_regions = NULL;
    }
    PyMem_Free((void *)s->hungry);
    s->hungry = NULL;
    s->bell = NULL;
}

static int state_traverse(SendState *s, visitproc visit, void *arg)
{
    Py_VISIT(s->plain);
    Py_VISIT(s->kq);
    Py_VISIT(s->rq);
    Py_VISIT(s->h_last);
    Py_VISIT(s->h_enc);
    Py_VISIT(s->max_message);
    return 0;
}

static int state_clear(SendState *s)
{
    state_release(s);
    Py_CLEAR(s->plain);
    Py_CLEAR(s->kq);
    Py_CLEAR(s->rq);
    Py_CLEAR(s->h_last);
    Py_CLEAR(s->h_enc);
    Py_CLEAR(s->plain_bytes);
    Py_CLEAR(s->plain_since);
    Py_CLEAR(s->next_hungry);
    Py_CLEAR(s->hungry_tokens);
    Py_CLEAR(s->tokens_at);
    Py_CLEAR(s->max_message);
    Py_CLEAR(s->nparts_obj);
    return 0;
}

static void state_dealloc(SendState *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    state_clear(s);
    /* the type itself: a static type here; a heap subclass's own
     * dealloc (subtype_dealloc) releases it, and its traverse visits it */
    tp->tp_free((PyObject *)s);
}

/* a per-partition array of nparts items of 8 bytes */
static int hold_array(PyObject *o, Py_buffer *b, int nparts, const char *name)
{
    if (PyObject_GetBuffer(o, b, PyBUF_SIMPLE) != 0)
        return -1;
    if (b->len != (Py_ssize_t)nparts * 8) {
        PyErr_Format(PyExc_ValueError, "_bind(): %s holds %zd bytes, not %d partitions x 8", name, b->len,
                     nparts);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* the uint32 word `word` of a partition header's mapping (a held buffer) */
static volatile uint32_t *header_word(PyObject *o, Py_buffer *b, Py_ssize_t word)
{
    if (PyObject_GetBuffer(o, b, PyBUF_SIMPLE) != 0)
        return NULL;
    if (b->len < (word + 1) * 4) {
        PyErr_Format(PyExc_ValueError, "_bind(): a header mapping of %zd bytes has no word %zd", b->len, word);
        PyBuffer_Release(b);
        return NULL;
    }
    return (volatile uint32_t *)b->buf + word;
}

/* _bind(nparts, plain_bytes, plain_since, next_hungry, hungry_tokens,
 *       tokens_at, waiters, bell): take the per-partition arrays and the
 * header mappings (buffers held until _unbind) */
static PyObject *state_bind(SendState *s, PyObject *args)
{
    int nparts;
    PyObject *pb, *ps, *nh, *ht, *ta, *waiters, *bell;
    if (!PyArg_ParseTuple(args, "iOOOOOOO:_bind", &nparts, &pb, &ps, &nh, &ht, &ta, &waiters, &bell))
        return NULL;
    if (!rules.ready) {
        PyErr_SetString(PyExc_RuntimeError, "_bind(): shmlog.core._send.set_rules() was not called");
        return NULL;
    }
    if (s->bound) {
        PyErr_SetString(PyExc_RuntimeError, "_bind(): this state is bound already");
        return NULL;
    }
    if (nparts < 1 || !PyList_Check(waiters) || PyList_GET_SIZE(waiters) != nparts) {
        PyErr_SetString(PyExc_ValueError, "_bind(): need nparts >= 1 and one header mapping per partition");
        return NULL;
    }
    s->nparts = nparts;
    Py_XSETREF(s->nparts_obj, PyLong_FromLong(nparts));
    if (s->nparts_obj == NULL)
        return NULL;
    s->b_regions = PyMem_Calloc((size_t)nparts, sizeof(Py_buffer));
    s->hungry = PyMem_Calloc((size_t)nparts, sizeof(*s->hungry));
    if (s->b_regions == NULL || s->hungry == NULL) {
        PyMem_Free(s->b_regions);
        PyMem_Free((void *)s->hungry);
        s->b_regions = NULL;
        s->hungry = NULL;
        return PyErr_NoMemory();
    }
    s->bound = 1; /* from here state_release() undoes what was taken */
    if (hold_array(pb, &s->b_plain_bytes, nparts, "plain_bytes") ||
        hold_array(ps, &s->b_plain_since, nparts, "plain_since") ||
        hold_array(nh, &s->b_next_hungry, nparts, "next_hungry") ||
        hold_array(ht, &s->b_hungry_tokens, nparts, "hungry_tokens") ||
        hold_array(ta, &s->b_tokens_at, nparts, "tokens_at"))
        goto fail;
    for (int p = 0; p < nparts; p++) {
        s->hungry[p] = header_word(PyList_GET_ITEM(waiters, p), &s->b_regions[p], rules.hungry_word);
        if (s->hungry[p] == NULL)
            goto fail;
    }
    s->bell = header_word(bell, &s->b_bell, rules.bell_word);
    if (s->bell == NULL)
        goto fail;
    Py_XSETREF(s->plain_bytes, Py_NewRef(pb));
    Py_XSETREF(s->plain_since, Py_NewRef(ps));
    Py_XSETREF(s->next_hungry, Py_NewRef(nh));
    Py_XSETREF(s->hungry_tokens, Py_NewRef(ht));
    Py_XSETREF(s->tokens_at, Py_NewRef(ta));
    Py_RETURN_NONE;
fail:
    state_release(s);
    return NULL;
}

/* _unbind(): let go of the header mappings (Producer.close); send() then
 * takes the Python path for this state */
static PyObject *state_unbind(SendState *s, PyObject *unused)
{
    (void)unused;
    state_release(s);
    Py_RETURN_NONE;
}

static PyMethodDef state_methods[] = {
    {"_bind", (PyCFunction)state_bind, METH_VARARGS,
     "_bind(nparts, plain_bytes, plain_since, next_hungry, hungry_tokens, tokens_at, waiters, bell)"},
    {"_unbind", (PyCFunction)state_unbind, METH_NOARGS, "_unbind(): release the header mappings"},
    {NULL, NULL, 0, NULL},
};

/* Object members are T_OBJECT_EX (set to None at birth): CPython 3.11
 * specializes an attribute read only for those (LOAD_ATTR_SLOT), any other
 * member type takes the generic lookup, several times slower, on every
 * read from Python. The numbers below are read by Python per commit, not
 * per message. */
#define S_OFF(f) offsetof(SendState, f)
static PyMemberDef state_members[] = {
    {"plain", T_OBJECT_EX, S_OFF(plain), 0, NULL},
    {"kq", T_OBJECT_EX, S_OFF(kq), 0, NULL},
    {"rq", T_OBJECT_EX, S_OFF(rq), 0, NULL},
    {"h_last", T_OBJECT_EX, S_OFF(h_last), 0, NULL},
    {"h_enc", T_OBJECT_EX, S_OFF(h_enc), 0, NULL},
    {"max_message", T_OBJECT_EX, S_OFF(max_message), 0, NULL},
    {"nparts", T_OBJECT_EX, S_OFF(nparts_obj), READONLY, NULL},
    /* held through buffers: read-only, so they are never swapped under C */
    {"plain_bytes", T_OBJECT_EX, S_OFF(plain_bytes), READONLY, NULL},
    {"plain_since", T_OBJECT_EX, S_OFF(plain_since), READONLY, NULL},
    {"next_hungry", T_OBJECT_EX, S_OFF(next_hungry), READONLY, NULL},
    {"hungry_tokens", T_OBJECT_EX, S_OFF(hungry_tokens), READONLY, NULL},
    {"tokens_at", T_OBJECT_EX, S_OFF(tokens_at), READONLY, NULL},
    {"h_extra", T_LONGLONG, S_OFF(h_extra), 0, NULL},
    {"limit", T_LONGLONG, S_OFF(limit), 0, NULL},
    {"kq_limit", T_LONGLONG, S_OFF(kq_limit), 0, NULL},
    {"rq_limit", T_LONGLONG, S_OFF(rq_limit), 0, NULL},
    {"rq_bytes", T_LONGLONG, S_OFF(rq_bytes), 0, NULL},
    {"kq_bytes", T_LONGLONG, S_OFF(kq_bytes), 0, NULL},
    {"kq_since", T_DOUBLE, S_OFF(kq_since), 0, NULL},
    {"kq_at", T_DOUBLE, S_OFF(kq_at), 0, NULL},
    {"kq_next", T_DOUBLE, S_OFF(kq_next), 0, NULL},
    {"sticky", T_INT, S_OFF(sticky), 0, NULL},
    {"key_p", T_INT, S_OFF(key_p), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* every object member starts as None (T_OBJECT_EX raises on NULL) */
static void none_fill(PyObject **slots[], size_t n)
{
    for (size_t i = 0; i < n; i++)
        *slots[i] = Py_NewRef(Py_None);
}

static PyObject *state_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    SendState *s = (SendState *)PyType_GenericNew(tp, args, kw);
    if (s == NULL)
        return NULL;
    PyObject **slots[] = {&s->plain, &s->kq, &s->rq, &s->h_last, &s->h_enc, &s->plain_bytes,
                          &s->plain_since, &s->next_hungry, &s->hungry_tokens, &s->tokens_at,
                          &s->max_message, &s->nparts_obj};
    none_fill(slots, sizeof(slots) / sizeof(slots[0]));
    return (PyObject *)s;
}

static PyTypeObject SendStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlog.core._send._SendState",
    .tp_basicsize = sizeof(SendState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A producer's per-topic state that send()'s C fast path reads (see producer._TopicState).",
    .tp_new = state_new,
    .tp_dealloc = (destructor)state_dealloc,
    .tp_traverse = (traverseproc)state_traverse,
    .tp_clear = (inquiry)state_clear,
    .tp_methods = state_methods,
    .tp_members = state_members,
};

/* ------------------------------------------------------------ _SendBase */

typedef struct {
    PyObject_HEAD
    PyObject *topics;    /* dict: topic name -> _TopicState */
    PyObject *error;     /* an asynchronous error to raise on the next send, or None */
    PyObject *linger_ms; /* the producer's setting, as given */
    PyObject *wake;      /* the flusher's threading.Event */
} SendBase;

static int base_traverse(SendBase *b, visitproc visit, void *arg)
{
    Py_VISIT(b->topics);
    Py_VISIT(b->error);
    Py_VISIT(b->linger_ms);
    Py_VISIT(b->wake);
    return 0;
}

static int base_clear(SendBase *b)
{
    Py_CLEAR(b->topics);
    Py_CLEAR(b->error);
    Py_CLEAR(b->linger_ms);
    Py_CLEAR(b->wake);
    return 0;
}

static void base_dealloc(SendBase *b)
{
    PyTypeObject *tp = Py_TYPE(b);
    PyObject_GC_UnTrack(b);
    base_clear(b);
    tp->tp_free((PyObject *)b); /* the type: as state_dealloc says */
}

/* interned names */
/* shmlog.core._messages.RichQueue (rich_queue.h), looked up at import */
static PyTypeObject *rich_queue_type;

static PyObject *s_topic, *s_value, *s_key, *s_headers, *s_partition, *s_timestamp_ms, *s_on_delivery;
static PyObject *s_send_py, *s_send_one, *s_send_keyed_one, *s_commit_plain, *s_commit_keyed, *s_rich_queued,
    *s_set, *s_empty_bytes;

enum { A_TOPIC, A_VALUE, A_KEY, A_HEADERS, A_PARTITION, A_TS, A_CB, A_COUNT };

/* send()'s arguments by name; 0 when they take a shape this parser does
 * not (too many, an unknown or repeated name): the Python path names it */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **a)
{
    if (nargs > A_COUNT)
        return 0;
    for (int i = 0; i < A_COUNT; i++)
        a[i] = NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    if (kwnames != NULL) {
        static PyObject **names[A_COUNT] = {&s_topic, &s_value, &s_key, &s_headers, &s_partition,
                                            &s_timestamp_ms, &s_on_delivery};
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nk; k++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, k);
            int j = 0;
            /* names at a call site are interned: pointer equality first */
            while (j < A_COUNT && *names[j] != name)
                j++;
            if (j == A_COUNT) {
                j = 0;
                while (j < A_COUNT && !(PyUnicode_Check(name) && PyUnicode_Compare(name, *names[j]) == 0))
                    j++;
                if (PyErr_Occurred())
                    PyErr_Clear();
            }
            if (j == A_COUNT || a[j] != NULL)
                return 0;
            a[j] = args[nargs + k];
        }
    }
    if (a[A_TOPIC] == NULL || a[A_VALUE] == NULL)
        return 0;
    for (int i = A_KEY; i < A_COUNT; i++)
        if (a[i] == NULL)
            a[i] = Py_None;
    return 1;
}

/* self.<name>(st, p, ...) as producer.py calls it; a new reference or NULL */
static PyObject *call(PyObject *self, PyObject *name, PyObject *st, long p, PyObject *x, PyObject *y)
{
    PyObject *pobj = PyLong_FromLong(p);
    if (pobj == NULL)
        return NULL;
    PyObject *argv[5] = {self, st, pobj, x, y};
    size_t n = 3 + (x != NULL) + (y != NULL);
    PyObject *r = PyObject_VectorcallMethod(name, argv, n, NULL);
    Py_DECREF(pobj);
    return r;
}

/* self.<name>(st) */
static PyObject *call_st(PyObject *self, PyObject *name, PyObject *st)
{
    PyObject *argv[2] = {self, st};
    return PyObject_VectorcallMethod(name, argv, 2, NULL);
}

/* the result of a call whose value is dropped: 0, or -1 with its error */
static int done_with(PyObject *r)
{
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* a new batch: the flusher honours linger_ms (self._wake.set()) */
static int wake(SendBase *b)
{
    if (b->wake == NULL || b->wake == Py_None)
        return 0;
    PyObject *argv[1] = {b->wake};
    return done_with(PyObject_VectorcallMethod(s_set, argv, 1, NULL));
}

static inline int reader_waits(const SendState *s, long p)
{
    return *s->hungry[p] != 0 || *s->bell != 0;
}

/* the lone-message rule of producer.py's _send_py (the budget as refilled
 * by now, the last commit at least LONE_AFTER ago), unchanged */
static inline int lone_goes(const SendState *s, long p, double now)
{
    const double *next_hungry = s->b_next_hungry.buf, *tokens = s->b_hungry_tokens.buf,
                 *tokens_at = s->b_tokens_at.buf;
    double since = now - tokens_at[p];
    return now >= next_hungry[p] &&
           (reader_waits(s, p) ||
            (since >= rules.lone_after && tokens[p] + since * rules.hungry_rate >= 1.0));
}

/* 1 for an exact int in [lo, hi] (stored in *out), else 0 */
static int int_in(PyObject *o, long long lo, long long hi, long long *out)
{
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

/* what a fast branch returns: R_DONE (sent), R_ERROR (an exception is
 * set), R_SLOW (nothing done: the Python path takes the call whole) */
enum { R_DONE, R_ERROR, R_SLOW };

static int send_plain(SendBase *b, PyObject *self, PyObject *st_obj, SendState *s, long p, PyObject *value,
                      Py_ssize_t size, int linger)
{
    PyObject *vals = PyList_GET_ITEM(s->plain, p);
    if (!PyList_CheckExact(vals))
        return R_SLOW;
    if (PyList_GET_SIZE(vals) == 0 && !linger && lone_goes(s, p, rule_now())) {
        /* nothing queued: a lone message for a reader (producer.py) */
        PyObject *r = call(self, s_send_one, st_obj, p, value, NULL);
        if (r == NULL)
            return R_ERROR;
        int sent = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (sent < 0)
            return R_ERROR;
        if (sent)
            return R_DONE;
        if (!s->bound) /* closed while it ran: the Python path says so */
            return R_SLOW;
    }
    if (PyList_Append(vals, value) < 0)
        return R_ERROR;
    /* racy across threads, and only sizes the batch (as in Python) */
    long long *plain_bytes = s->b_plain_bytes.buf;
    long long nb = plain_bytes[p] = plain_bytes[p] + size + rules.record_overhead;
    if (nb >= s->limit) {
        if (done_with(call(self, s_commit_plain, st_obj, p, NULL, NULL)) < 0)
            return R_ERROR;
        if (s->bound && p == s->sticky && s->nparts > 1) {
            /* commit_rules.next_sticky: the next partition is part of the
             * same stream */
            long q = (p + 1) % s->nparts;
            s->sticky = (int)q;
            double due = rule_now() + rules.stream_gap;
            double *next_hungry = s->b_next_hungry.buf;
            if (next_hungry[q] < due)
                next_hungry[q] = due;
        }
        return R_DONE;
    }
    if (!linger && reader_waits(s, p) && rule_now() >= ((double *)s->b_next_hungry.buf)[p])
        return done_with(call(self, s_commit_plain, st_obj, p, NULL, NULL)) < 0 ? R_ERROR : R_DONE;
    if (PyList_GET_SIZE(vals) == 1) {
        ((double *)s->b_plain_since.buf)[p] = clock_now();
        if (wake(b) < 0)
            return R_ERROR;
    }
    return R_DONE;
}

static int send_keyed(SendBase *b, PyObject *self, PyObject *st_obj, SendState *s, PyObject *key,
                      PyObject *value, Py_ssize_t size, int linger)
{
    PyObject *kq = s->kq;
    if (!PyList_CheckExact(kq))
        return R_SLOW;
    if (PyList_GET_SIZE(kq) == 0 && !linger) {
        long p = (long)shmlog_key_partition(PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key),
                                            (uint32_t)s->nparts);
        double now = rule_now();
        if (now - s->kq_at >= rules.lone_after && lone_goes(s, p, now)) {
            PyObject *r = call(self, s_send_keyed_one, st_obj, p, key, value);
            if (r == NULL)
                return R_ERROR;
            int sent = PyObject_IsTrue(r);
            Py_DECREF(r);
            if (sent < 0)
                return R_ERROR;
            if (sent) {
                /* the lone commit's time is the end of this send(), not of
                 * its crossing: the Python after it takes longer than
                 * LONE_AFTER, so a stream's next send would find the last
                 * commit "old", go lone too, and so on while the budgets
                 * of the partitions its keys spread over last (a stream
                 * committed message by message). A paced producer's gaps
                 * are far longer than this difference: its decisions do
                 * not change. */
                s->kq_at = rule_now();
                return R_DONE;
            }
            if (!s->bound)
                return R_SLOW;
        }
    }
    /* key and value back to back under the GIL: one record */
    if (PyList_Append(kq, key) < 0)
        return R_ERROR;
    if (PyList_Append(kq, value) < 0) {
        /* no memory for the value: take the key back out, nothing queued */
        Py_ssize_t n = PyList_GET_SIZE(kq);
        PyObject *err_type, *err_value, *err_tb;
        PyErr_Fetch(&err_type, &err_value, &err_tb);
        if (n > 0 && PyList_GET_ITEM(kq, n - 1) == key)
            PyList_SetSlice(kq, n - 1, n, NULL);
        PyErr_Restore(err_type, err_value, err_tb);
        return R_ERROR;
    }
    long long nb = s->kq_bytes = s->kq_bytes + size + rules.record_overhead;
    if (nb >= s->kq_limit)
        return done_with(call_st(self, s_commit_keyed, st_obj)) < 0 ? R_ERROR : R_DONE;
    if (!linger && *s->bell != 0 && rule_now() >= s->kq_next)
        return done_with(call_st(self, s_commit_keyed, st_obj)) < 0 ? R_ERROR : R_DONE;
    if (PyList_GET_SIZE(kq) == 2) {
        s->kq_since = clock_now();
        if (wake(b) < 0)
            return R_ERROR;
    }
    return R_DONE;
}

/* 1 when headers is h_last's copy item for item: both exact lists of the
 * same length holding the same objects, each an exact tuple (immutable).
 * list == list finds the same (it compares identical items as equal) at
 * a third of the cost; 0: compare them in full. */
static int headers_same(PyObject *headers, PyObject *last)
{
    if (!PyList_CheckExact(headers) || !PyList_CheckExact(last))
        return 0;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    if (n != PyList_GET_SIZE(last))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (item != PyList_GET_ITEM(last, i) || !PyTuple_CheckExact(item))
            return 0;
    }
    return 1;
}

/* the rich queue: one record tuple (partition, key, value, header bytes,
 * timestamp_ms, on_delivery), as producer.py appends it */
static int send_rich(PyObject *self, PyObject *st_obj, SendState *s, PyObject **a, long long max_message)
{
    PyObject *key = a[A_KEY], *value = a[A_VALUE], *headers = a[A_HEADERS], *partition = a[A_PARTITION],
             *ts = a[A_TS];
    PyObject *hdr;
    long long extra;
    if (headers == Py_None) {
        hdr = s_empty_bytes;
        extra = rules.record_overhead;
    } else {
        if (s->h_last == NULL)
            return R_SLOW;
        int eq = headers_same(headers, s->h_last);
        if (eq == 0)
            eq = PyObject_RichCompareBool(headers, s->h_last, Py_EQ);
        if (eq < 0)
            return R_ERROR;
        if (!eq || s->h_enc == NULL || !s->bound)
            return R_SLOW;
        hdr = s->h_enc;
        extra = s->h_extra;
        if (!PyBytes_CheckExact(hdr))
            return R_SLOW;
    }
    long long p;
    if (partition == Py_None)
        p = key == Py_None ? s->sticky : s->key_p;
    else if (!int_in(partition, 0, s->nparts - 1, &p))
        return R_SLOW;
    if (key != Py_None && !PyBytes_CheckExact(key))
        return R_SLOW;
    long long ts_ms = -1;
    if (ts != Py_None && !int_in(ts, 0, INT64_MAX, &ts_ms))
        return R_SLOW;
    Py_ssize_t size = PyBytes_GET_SIZE(value) + (key == Py_None ? 0 : PyBytes_GET_SIZE(key));
    if (size > max_message)
        return R_SLOW;
    if (Py_TYPE(s->rq) != rich_queue_type)
        return R_SLOW;
    Py_INCREF(hdr); /* held across the keyed commit below, which may change h_enc */
    if (PyList_GET_SIZE(s->kq) > 0) {
        /* queued keyed records are older than this one */
        if (done_with(call_st(self, s_commit_keyed, st_obj)) < 0) {
            Py_DECREF(hdr);
            return R_ERROR;
        }
    }
    /* the keyed commit above may have run Python: the queue is read now */
    shmlog_rich_queue_t *rq = (shmlog_rich_queue_t *)s->rq;
    if (Py_TYPE(rq) != rich_queue_type) { /* not reached: rq is set once, to a RichQueue */
        Py_DECREF(hdr);
        PyErr_SetString(PyExc_RuntimeError, "the rich queue is not a RichQueue");
        return R_ERROR;
    }
    int rc = shmlog_rq_push(rq, (int32_t)p, key, value, hdr, ts == Py_None ? -1 : (int64_t)ts_ms, a[A_CB]);
    Py_DECREF(hdr);
    if (rc < 0)
        return R_ERROR;
    long long nb = s->rq_bytes = s->rq_bytes + size + extra;
    /* the rest only for a new queue, a full one or a waiting reader */
    if (nb >= s->rq_limit || rq->n == 1 || !s->bound || *s->bell != 0 || (p >= 0 && *s->hungry[p] != 0)) {
        PyObject *pobj = PyLong_FromLongLong(p);
        PyObject *nbobj = pobj ? PyLong_FromLongLong(nb) : NULL;
        int r = R_DONE;
        if (nbobj == NULL) {
            r = R_ERROR;
        } else {
            PyObject *argv[4] = {self, st_obj, pobj, nbobj};
            if (done_with(PyObject_VectorcallMethod(s_rich_queued, argv, 4, NULL)) < 0)
                r = R_ERROR;
        }
        Py_XDECREF(pobj);
        Py_XDECREF(nbobj);
        return r;
    }
    return R_DONE;
}

/* the branches of producer.py's _send_py, in its order */
static int send_fast(SendBase *b, PyObject *self, PyObject **a)
{
    if (b->topics == NULL || !PyDict_CheckExact(b->topics))
        return R_SLOW;
    PyObject *value = a[A_VALUE];
    if (!PyBytes_CheckExact(value))
        return R_SLOW;
    PyObject *st_obj = PyDict_GetItemWithError(b->topics, a[A_TOPIC]);
    if (st_obj == NULL)
        return PyErr_Occurred() ? R_ERROR : R_SLOW;
    if (!PyObject_TypeCheck(st_obj, &SendStateType))
        return R_SLOW;
    SendState *s = (SendState *)st_obj;
    if (!s->bound || s->plain == NULL || !PyList_CheckExact(s->plain) ||
        PyList_GET_SIZE(s->plain) != s->nparts || s->kq == NULL || !PyList_CheckExact(s->kq) ||
        s->rq == NULL || Py_TYPE(s->rq) != rich_queue_type || s->sticky < 0 || s->sticky >= s->nparts ||
        s->key_p < -1 || s->key_p >= s->nparts)
        return R_SLOW;
    long long max_message;
    if (!int_in(s->max_message, 0, INT64_MAX, &max_message))
        return R_SLOW;
    /* an asynchronous error is raised by the Python path */
    if (b->error != NULL && b->error != Py_None)
        return R_SLOW;
    int linger = b->linger_ms == NULL ? 0 : PyObject_IsTrue(b->linger_ms);
    if (linger < 0)
        return R_ERROR;
    PyObject *key = a[A_KEY];
    Py_INCREF(st_obj); /* the calls below may drop it from the dict */
    int r = R_SLOW;
    if (a[A_HEADERS] == Py_None && a[A_TS] == Py_None && a[A_CB] == Py_None &&
        ((shmlog_rich_queue_t *)s->rq)->n == 0) {
        if (key == Py_None) {
            Py_ssize_t size = PyBytes_GET_SIZE(value);
            if (size > max_message)
                goto out; /* the Python path raises MessageTooLarge */
            long long p = -1;
            if (a[A_PARTITION] == Py_None)
                p = s->sticky;
            else if (!int_in(a[A_PARTITION], 0, s->nparts - 1, &p))
                p = -1;
            /* nothing keyed ahead of it */
            if (p >= 0 && PyList_GET_SIZE(s->kq) == 0) {
                r = send_plain(b, self, st_obj, s, (long)p, value, size, linger);
                goto out;
            }
        } else if (PyBytes_CheckExact(key) && a[A_PARTITION] == Py_None) {
            Py_ssize_t size = PyBytes_GET_SIZE(value) + PyBytes_GET_SIZE(key);
            if (size <= max_message)
                r = send_keyed(b, self, st_obj, s, key, value, size, linger);
            goto out;
        }
    }
    r = send_rich(self, st_obj, s, a, max_message);
out:
    Py_DECREF(st_obj);
    return r;
}

static PyObject *base_send(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *a[A_COUNT];
    if (rules.ready && parse_args(args, nargs, kwnames, a)) {
        int r = send_fast((SendBase *)self, self, a);
        if (r == R_DONE)
            Py_RETURN_NONE;
        if (r == R_ERROR)
            return NULL;
    }
    /* everything else: the Python path, with the caller's arguments */
    PyObject *slow = PyObject_GetAttr(self, s_send_py);
    if (slow == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(slow, args, nargs, kwnames);
    Py_DECREF(slow);
    return r;
}

static PyMethodDef base_methods[] = {
    {"send", (PyCFunction)(void (*)(void))base_send, METH_FASTCALL | METH_KEYWORDS,
     "send($self, /, topic, value, key=None, headers=None, partition=None, timestamp_ms=None, "
     "on_delivery=None)\n--\n\n"
     "Queue one message for `topic` (see docs/api.md). The common forms are appended in C; the\n"
     "rest, and every error, go through Producer._send_py."},
    {NULL, NULL, 0, NULL},
};

#define B_OFF(f) offsetof(SendBase, f)
/* T_OBJECT_EX: see state_members */
static PyMemberDef base_members[] = {
    {"_topics", T_OBJECT_EX, B_OFF(topics), 0, NULL},
    {"_error", T_OBJECT_EX, B_OFF(error), 0, NULL},
    {"linger_ms", T_OBJECT_EX, B_OFF(linger_ms), 0, NULL},
    {"_wake", T_OBJECT_EX, B_OFF(wake), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *base_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    SendBase *b = (SendBase *)PyType_GenericNew(tp, args, kw);
    if (b == NULL)
        return NULL;
    PyObject **slots[] = {&b->topics, &b->error, &b->linger_ms, &b->wake};
    none_fill(slots, sizeof(slots) / sizeof(slots[0]));
    return (PyObject *)b;
}

static PyTypeObject SendBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmlog.core._send._SendBase",
    .tp_basicsize = sizeof(SendBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Producer's base: send()'s fast branches in C (see shmlog/client/producer.py).",
    .tp_new = base_new,
    .tp_dealloc = (destructor)base_dealloc,
    .tp_traverse = (traverseproc)base_traverse,
    .tp_clear = (inquiry)base_clear,
    .tp_methods = base_methods,
    .tp_members = base_members,
};

/* ------------------------------------------------------------ module */

/* set_rules(lone_after, hungry_rate, stream_gap, record_overhead,
 *           hungry_word, bell_word): commit_rules.py's numbers */
static PyObject *set_rules(PyObject *mod, PyObject *args)
{
    (void)mod;
    double lone_after, hungry_rate, stream_gap;
    long long overhead;
    Py_ssize_t hungry_word, bell_word;
    if (!PyArg_ParseTuple(args, "dddLnn:set_rules", &lone_after, &hungry_rate, &stream_gap, &overhead,
                          &hungry_word, &bell_word))
        return NULL;
    if (hungry_word < 0 || bell_word < 0 || overhead < 0) {
        PyErr_SetString(PyExc_ValueError, "set_rules(): header words and overhead must be >= 0");
        return NULL;
    }
    rules.lone_after = lone_after;
    rules.hungry_rate = hungry_rate;
    rules.stream_gap = stream_gap;
    rules.record_overhead = overhead;
    rules.hungry_word = hungry_word;
    rules.bell_word = bell_word;
    rules.ready = 1;
    Py_RETURN_NONE;
}

/* set_clock(callable or None): the timing rules' clock (rule_now) */
static PyObject *set_clock(PyObject *mod, PyObject *clock)
{
    (void)mod;
    if (clock != Py_None && !PyCallable_Check(clock)) {
        PyErr_SetString(PyExc_TypeError, "set_clock(): need a callable returning seconds, or None");
        return NULL;
    }
    Py_XSETREF(rule_clock, clock == Py_None ? NULL : Py_NewRef(clock));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_clock", set_clock, METH_O, "set_clock(callable or None): the timing rules' clock (a bench's hook)"},
    {"set_rules", set_rules, METH_VARARGS,
     "set_rules(lone_after, hungry_rate, stream_gap, record_overhead, hungry_word, bell_word)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmlog.core._send",
    "Producer.send()'s fast branches in C: appends to the producer's queues, one call per message.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

static int intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__send(void)
{
    if (intern(&s_topic, "topic") || intern(&s_value, "value") || intern(&s_key, "key") ||
        intern(&s_headers, "headers") || intern(&s_partition, "partition") ||
        intern(&s_timestamp_ms, "timestamp_ms") || intern(&s_on_delivery, "on_delivery") ||
        intern(&s_send_py, "_send_py") || intern(&s_send_one, "_send_one") ||
        intern(&s_send_keyed_one, "_send_keyed_one") || intern(&s_commit_plain, "_commit_plain") ||
        intern(&s_commit_keyed, "_commit_keyed") || intern(&s_rich_queued, "_rich_queued") ||
        intern(&s_set, "set"))
        return NULL;
    PyObject *messages = PyImport_ImportModule("shmlog.core._messages");
    if (messages == NULL)
        return NULL;
    rich_queue_type = (PyTypeObject *)PyObject_GetAttrString(messages, "RichQueue");
    Py_DECREF(messages);
    if (rich_queue_type == NULL)
        return NULL;
    if (!PyType_Check(rich_queue_type) ||
        rich_queue_type->tp_basicsize != (Py_ssize_t)sizeof(shmlog_rich_queue_t)) {
        PyErr_SetString(PyExc_ImportError, "shmlog.core._messages.RichQueue is not the one this module was built with");
        return NULL;
    }
    s_empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (s_empty_bytes == NULL || PyType_Ready(&SendStateType) < 0 || PyType_Ready(&SendBaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "_SendState", (PyObject *)&SendStateType) < 0 ||
        PyModule_AddObjectRef(m, "_SendBase", (PyObject *)&SendBaseType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
