/* futex.c — see futex.h. Only slow paths come here. */
#define _GNU_SOURCE
#include "futex.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
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

/* A zombie (killed, not yet reaped by its parent) is dead: it will never
 * commit a claim or move a reader position again. kill(pid, 0) succeeds on
 * it, so look at the state in /proc/<pid>/stat ("pid (comm) S ..."). */
static int shmlog_pid_zombie(uint32_t pid)
{
    char path[32], buf[512];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* no /proc: trust kill() */
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *rp = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

int shmlog_pid_alive(uint32_t pid)
{
    if (pid == 0 || pid > (uint32_t)INT_MAX)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno != EPERM) /* EPERM: exists, not ours */
        return 0;
    return !shmlog_pid_zombie(pid);
}
