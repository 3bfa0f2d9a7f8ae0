/* floor.c — the host's latency floor for W4: two C processes, no Python,
 * 100-byte-class messages paced one way over shared memory (a MAP_SHARED
 * mapping made before fork), the consumer waiting in one of four ways.
 * Built and run by bench/floor.py (cc on the fly, nothing committed).
 *
 *   floor MODE RATE N WARM      MODE: spin | futex | spinfutex:US | adaptive
 *
 * The producer paces as bench/common.py's pace_until does (sleep to 60 us
 * before the slot, then sched_yield), stamps CLOCK_MONOTONIC right before
 * the publish, and wakes the futex only when the consumer says it sleeps
 * (as shmlog's committers do). The consumer stamps on receipt. One line of
 * key=value pairs comes out: latency percentiles, the consumer's and the
 * producer's CPU share of one core over the measured part, late sends, and
 * the share of messages received on the CPU they were sent from. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE 128

/* each word the two sides write sits alone on its own line pair, so the
 * figure is the wake path's, not false sharing's */
struct shared {
    _Alignas(LINE) uint32_t head; /* messages published; also the futex word */
    _Alignas(LINE) uint32_t sleeping; /* the consumer is (about to be) in futex_wait */
    _Alignas(LINE) uint32_t ready; /* start barrier */
    _Alignas(LINE) uint64_t late; /* producer: sends >1 ms after their slot */
    double producer_cpu;
    _Alignas(LINE) uint32_t producer_on; /* the CPU the producer sent its last message from */
    _Alignas(LINE) uint64_t stamp[]; /* one per message: the send time */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void futex_wait(uint32_t *w, uint32_t v, uint64_t timeout_ns)
{
    struct timespec ts = {(time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull)};
    syscall(SYS_futex, w, FUTEX_WAIT, v, timeout_ns ? &ts : NULL, NULL, 0);
}

static void futex_wake(uint32_t *w)
{
    syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void relax(void)
{
    __builtin_ia32_pause();
}

static void producer(struct shared *s, uint32_t total, uint32_t warm, uint64_t rate)
{
    while (!__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE))
        relax();
    double period = 1e9 / (double)rate;
    uint64_t start = now_ns() + 1000000, late = 0;
    double cpu0 = 0;
    uint64_t w0 = 0;
    for (uint32_t i = 0; i < total; i++) {
        if (i == warm) {
            cpu0 = cpu_s();
            w0 = now_ns();
        }
        uint64_t target = start + (uint64_t)(i * period), t;
        while ((t = now_ns()) < target) {
            uint64_t left = target - t;
            if (left > 70000) {
                struct timespec ts = {0, (long)(left - 60000)};
                nanosleep(&ts, NULL);
            } else {
                sched_yield();
            }
        }
        if (t - target > 1000000)
            late++;
        __atomic_store_n(&s->producer_on, (uint32_t)sched_getcpu(), __ATOMIC_RELAXED);
        s->stamp[i] = now_ns();
        /* seq_cst store, then the load of `sleeping`: pairs with the
         * consumer's seq_cst store of `sleeping` before its re-check */
        __atomic_store_n(&s->head, i + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&s->sleeping, __ATOMIC_SEQ_CST))
            futex_wake(&s->head);
    }
    s->late = late;
    s->producer_cpu = (cpu_s() - cpu0) / ((double)(now_ns() - w0) / 1e9);
}

/* wait until head > seen; spin_ns of busy polling first (UINT64_MAX: never
 * sleep), then the futex; sleep_ns > 0: a futex sleep of at most that long
 * first (adaptive: sleep until shortly before the next message is due) */
static uint32_t wait_for(struct shared *s, uint32_t seen, uint64_t sleep_ns, uint64_t spin_ns)
{
    uint32_t h;
    if (sleep_ns) {
        __atomic_store_n(&s->sleeping, 1, __ATOMIC_SEQ_CST);
        if ((h = __atomic_load_n(&s->head, __ATOMIC_SEQ_CST)) == seen)
            futex_wait(&s->head, seen, sleep_ns);
        __atomic_store_n(&s->sleeping, 0, __ATOMIC_RELAXED);
        if ((h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE)) != seen)
            return h;
    }
    uint64_t t0 = now_ns();
    for (unsigned i = 0;; i++) {
        if ((h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE)) != seen)
            return h;
        relax();
        if ((i & 63) == 63 && spin_ns != UINT64_MAX && now_ns() - t0 >= spin_ns)
            break;
    }
    for (;;) {
        __atomic_store_n(&s->sleeping, 1, __ATOMIC_SEQ_CST);
        if ((h = __atomic_load_n(&s->head, __ATOMIC_SEQ_CST)) != seen)
            break;
        futex_wait(&s->head, seen, 100000000ull);
        if ((h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE)) != seen)
            break;
    }
    __atomic_store_n(&s->sleeping, 0, __ATOMIC_RELAXED);
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, uint32_t n, double p)
{
    uint32_t i = (uint32_t)(p / 100.0 * (n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: floor spin|futex|spinfutex:US|adaptive RATE N WARM [pin]\n");
        return 2;
    }
    const char *mode = argv[1];
    uint64_t rate = strtoull(argv[2], NULL, 10);
    uint32_t n = (uint32_t)strtoul(argv[3], NULL, 10), warm = (uint32_t)strtoul(argv[4], NULL, 10);
    uint64_t spin_ns;
    int adaptive = 0;
    if (!strcmp(mode, "spin"))
        spin_ns = UINT64_MAX;
    else if (!strcmp(mode, "futex"))
        spin_ns = 0;
    else if (!strncmp(mode, "spinfutex:", 10))
        spin_ns = (uint64_t)(atof(mode + 10) * 1000);
    else if (!strcmp(mode, "adaptive"))
        spin_ns = 0, adaptive = 1;
    else {
        fprintf(stderr, "floor: unknown mode %s (spin, futex, spinfutex:US, adaptive)\n", mode);
        return 2;
    }
    if (rate == 0 || n == 0) {
        fprintf(stderr, "floor: RATE and N must be > 0\n");
        return 2;
    }
    uint32_t total = n + warm;
    size_t bytes = sizeof(struct shared) + (size_t)total * sizeof(uint64_t);
    struct shared *s = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) {
        perror("floor: mmap");
        return 1;
    }
    memset(s, 0, bytes); /* fault every page in before the clock starts */
    uint64_t *lat = calloc(n, sizeof(uint64_t));
    if (!lat) {
        perror("floor: calloc");
        return 1;
    }
    prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0); /* as the Python pacer sets it */
    pid_t pid = fork();
    if (pid < 0) {
        perror("floor: fork");
        return 1;
    }
    /* pin: consumer on CPU 0, producer on CPU 1 (the scheduler's own
     * placement is what a user gets; pinning shows what placement costs) */
    int pin = argc == 6 && !strcmp(argv[5], "pin");
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(pid == 0 ? 1 : 0, &set);
    if (pin && sched_setaffinity(0, sizeof set, &set) != 0)
        perror("floor: sched_setaffinity");
    if (pid == 0) {
        producer(s, total, warm, rate);
        _exit(0);
    }
    __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
    uint32_t seen = 0, k = 0, same_cpu = 0;
    double cpu0 = 0;
    uint64_t w0 = 0;
    /* adaptive: the gap as a running mean, the due time from the last
     * arrival; sleep until `margin` (plus the timed sleep's learnt
     * lateness) before it, spin until `margin` past */
    uint64_t gap = 0, last = 0, timer_late = 0;
    const uint64_t margin = 15000;
    while (seen < total) {
        uint64_t sleep_ns = 0, spin = spin_ns, t_sleep = 0;
        if (adaptive) {
            uint64_t t = now_ns();
            spin = 50000;
            if (gap > 60000 && last + gap > t + margin + timer_late) {
                sleep_ns = last + gap - margin - timer_late - t;
                spin = 2 * margin + timer_late;
                t_sleep = t;
            }
        }
        uint32_t h = wait_for(s, seen, sleep_ns, spin);
        uint64_t t = now_ns();
        if (sleep_ns && t - t_sleep > sleep_ns) {
            /* the timed sleep's end, late by this much (or a wake-up) */
            int64_t late = (int64_t)(t - t_sleep - sleep_ns);
            if (late < 200000)
                timer_late += (late - (int64_t)timer_late) / 8;
        }
        for (uint32_t i = seen; i < h; i++) {
            if (i == warm) {
                cpu0 = cpu_s();
                w0 = t;
            }
            if (i >= warm) {
                lat[k++] = t - s->stamp[i];
                /* received on the CPU the producer sent from: the wake-up
                 * found a running vCPU (the producer's) instead of an idle one */
                same_cpu += (uint32_t)sched_getcpu() == __atomic_load_n(&s->producer_on, __ATOMIC_RELAXED);
            }
        }
        if (adaptive) {
            uint64_t g = (t - last) / (h - seen);
            if (last && g < 20000000)
                gap = gap ? gap + ((int64_t)g - (int64_t)gap) / 8 : g;
            last = t;
        }
        seen = h;
    }
    double cpu = (cpu_s() - cpu0) / ((double)(now_ns() - w0) / 1e9);
    int st;
    waitpid(pid, &st, 0);
    qsort(lat, k, sizeof(uint64_t), cmp_u64);
    printf("mode=%s rate=%llu n=%u p50=%.2f p99=%.2f p99.9=%.2f max=%.2f consumer_cpu=%.3f "
           "producer_cpu=%.3f late_sends=%llu same_cpu=%.3f\n",
           mode, (unsigned long long)rate, k, pct(lat, k, 50), pct(lat, k, 99), pct(lat, k, 99.9),
           (double)lat[k - 1] / 1000.0, cpu, s->producer_cpu, (unsigned long long)s->late,
           k ? (double)same_cpu / k : 0.0);
    return 0;
}
