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

#endif
