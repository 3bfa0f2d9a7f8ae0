/* atomics.h — the only file that spells a memory order.
 *
 * Everything that lives in shared memory and is touched by more than one
 * process goes through these helpers, so the pairing of every release with
 * its acquire can be audited in one place. GCC/Clang __atomic builtins on
 * naturally aligned 32/64-bit words are lock-free on every target we build
 * for, which matters: a lock inside shared memory would let a SIGKILLed
 * process block everybody else (invariant 3).
 */
#ifndef SHMLOG_ATOMICS_H
#define SHMLOG_ATOMICS_H

#include <stdint.h>

static inline uint64_t shmlog_load_acquire_u64(const volatile uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint64_t shmlog_load_relaxed_u64(const volatile uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline uint32_t shmlog_load_acquire_u32(const volatile uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint32_t shmlog_load_relaxed_u32(const volatile uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void shmlog_store_release_u64(volatile uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline void shmlog_store_relaxed_u64(volatile uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void shmlog_store_release_u32(volatile uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline void shmlog_store_relaxed_u32(volatile uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* The claim: one fetch-add on the packed tail. acq_rel so that the claimer
 * sees the chunk's (re)initialisation that happened before the tail was
 * reset, and so that later claimers are ordered after it. */
static inline uint64_t shmlog_fetch_add_u64(volatile uint64_t *p, uint64_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}

/* Statistics counters (rotations, reclaimed chunks, aborted batches): read
 * by gauges only, they order nothing, so relaxed. */
static inline uint64_t shmlog_fetch_add_relaxed_u64(volatile uint64_t *p, uint64_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* Waiter counters and futex words: seq_cst, because a waiter's increment
 * and a waker's later load of the counter form a Dekker pair (see
 * wake_data and wake_space in log_internal.h). */
static inline uint32_t shmlog_fetch_add_u32(volatile uint32_t *p, uint32_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

static inline uint32_t shmlog_fetch_sub_u32(volatile uint32_t *p, uint32_t v)
{
    return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
}

/* A sleeper arms a futex word (sets its low bit) before its last look at
 * the data: seq_cst for the same Dekker pair as the counters above. */
static inline uint32_t shmlog_fetch_or_u32(volatile uint32_t *p, uint32_t v)
{
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}

/* Every state change of a frame word and of a chunk state is a CAS, so a
 * reaper that aborts a batch and the (slow, not dead) producer that commits
 * it can never both win. seq_cst: on x86 a locked instruction is a full
 * barrier anyway, and the committer relies on that before it reads the
 * waiter counter (commit() in claim.c, then wake_data). */
static inline int shmlog_cas_u64(volatile uint64_t *p, uint64_t *expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE);
}

static inline int shmlog_cas_u32(volatile uint32_t *p, uint32_t *expected, uint32_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE);
}

static inline void shmlog_fence_seq_cst(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void shmlog_fence_acquire(void)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
}

static inline void shmlog_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
