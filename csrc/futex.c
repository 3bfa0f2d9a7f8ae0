/* futex.c — see futex.h. Only slow paths come here. */
#define _GNU_SOURCE
#include "futex.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int shmlog_futex_wait(volatile uint32_t *word, uint32_t expected, uint64_t timeout_ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
    ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
    if (rc == 0)
        return 0;
    if (errno == EAGAIN)
        return 0; /* the word changed before we slept: that is a wake-up */
    if (errno == ETIMEDOUT)
        return -ETIMEDOUT;
    return -EINTR;
}

int shmlog_futex_wake(volatile uint32_t *word, int count)
{
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc < 0 ? 0 : (int)rc;
}

uint64_t shmlog_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int shmlog_pid_alive(uint32_t pid)
{
    if (pid == 0 || pid > (uint32_t)INT_MAX)
        return 0;
    if (kill((pid_t)pid, 0) == 0)
        return 1;
    return errno == EPERM; /* exists, just not ours */
}
