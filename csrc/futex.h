/* futex.h — sleeping and waking on 32-bit words in shared memory.
 *
 * Shared (not FUTEX_PRIVATE) because waiter and waker are different
 * processes; every wait has a timeout because the waker may be SIGKILLed
 * (invariant 3: nobody waits forever). Callers only wake when a waiter
 * counter says someone sleeps, so the fast path never enters the kernel.
 */
#ifndef SHMLOG_FUTEX_H
#define SHMLOG_FUTEX_H

#include <stdint.h>

/* 0 when woken (or the word no longer equals expected), -ETIMEDOUT, -EINTR */
int shmlog_futex_wait(volatile uint32_t *word, uint32_t expected, uint64_t timeout_ns);
/* number of waiters woken */
int shmlog_futex_wake(volatile uint32_t *word, int count);
/* CLOCK_MONOTONIC in ns (vDSO, not a syscall on Linux) */
uint64_t shmlog_now_ns(void);
/* 1 if pid is alive (or not ours to signal), 0 if it is gone */
int shmlog_pid_alive(uint32_t pid);

#endif
