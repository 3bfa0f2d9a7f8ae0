/* crc32c_selftest.c — standalone check and benchmark for crc32c.c.
 *
 * Not part of the library. Build and run (from csrc/):
 *   gcc -O2 -Wall -Wextra -std=c11 -fPIC -D_GNU_SOURCE \
 *       crc32c.c crc32c_selftest.c -o /tmp/crc32c_selftest -pthread
 *   /tmp/crc32c_selftest
 * Compares both paths against a bit-at-a-time reference (lengths, offsets,
 * block-boundary sizes, chaining) and reports throughput on 64 MiB.
 */
#include "crc32c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static int failures;

/* Textbook definition, one bit at a time: slow but obviously right. */
static uint32_t ref_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int i = 0; i < 8; i++)
            crc = (crc & 1u) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void check(const char *what, const char *name, size_t off, size_t len,
                  uint32_t got, uint32_t want)
{
    if (got != want) {
        if (failures < 20)
            fprintf(stderr, "FAIL %s/%s off=%zu len=%zu got=%08x want=%08x\n",
                    what, name, off, len, (unsigned)got, (unsigned)want);
        failures++;
    }
}

static void check_one(const char *name, crc_fn f, const unsigned char *base,
                      size_t off, size_t len, uint32_t seed)
{
    uint32_t want = ref_crc32c(seed, base + off, len);
    check("plain", name, off, len, f(seed, base + off, len), want);
}

static void check_chain(const char *name, crc_fn f, const unsigned char *base,
                        size_t off, size_t len)
{
    uint32_t want = ref_crc32c(0, base + off, len);
    size_t cut = len ? (size_t)(rng() % (len + 1)) : 0;
    uint32_t c = f(0, base + off, cut);
    c = f(c, base + off + cut, len - cut);
    check("chain2", name, off, len, c, want);
    /* three pieces, the middle one possibly tiny, to shuffle alignment */
    size_t a = len ? (size_t)(rng() % (len + 1)) : 0;
    size_t b = a + (len > a ? (size_t)(rng() % (len - a + 1)) : 0);
    c = f(0, base + off, a);
    c = f(c, base + off + a, b - a);
    c = f(c, base + off + b, len - b);
    check("chain3", name, off, len, c, want);
}

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double bench(crc_fn f, const unsigned char *buf, size_t len, int runs,
                    uint32_t *sink)
{
    double best = 1e30;
    for (int r = 0; r < runs; r++) {
        double t0 = now_sec();
        *sink ^= f(0, buf, len);
        double dt = now_sec() - t0;
        if (dt < best)
            best = dt;
    }
    return (double)len / best / 1e9;
}

int main(void)
{
    const struct {
        const char *name;
        crc_fn f;
    } impls[] = {{"dispatch", shmlog_crc32c}, {"sw", shmlog_crc32c_sw}};
    const size_t nimpl = sizeof impls / sizeof impls[0];

    printf("hw path in use: %d\n", shmlog_crc32c_hw());

    /* Known-answer vectors. */
    for (size_t i = 0; i < nimpl; i++) {
        check("kat", impls[i].name, 0, 9, impls[i].f(0, "123456789", 9),
              0xE3069283u);
        check("kat-empty", impls[i].name, 0, 0, impls[i].f(0, "", 0), 0);
        check("kat-empty-seed", impls[i].name, 0, 0,
              impls[i].f(0xDEADBEEFu, "", 0), 0xDEADBEEFu);
        unsigned char z[32] = {0}, o[32];
        memset(o, 0xff, sizeof o);
        /* RFC 3720 B.4 test vectors */
        check("kat-zeros", impls[i].name, 0, 32, impls[i].f(0, z, 32),
              0x8A9136AAu);
        check("kat-ones", impls[i].name, 0, 32, impls[i].f(0, o, 32),
              0x62A8AB43u);
    }
    check("ref-kat", "ref", 0, 9, ref_crc32c(0, "123456789", 9), 0xE3069283u);

    const size_t big = (size_t)3 << 20;
    unsigned char *buf = malloc(big + 64);
    if (!buf)
        return 2;
    for (size_t i = 0; i < big + 64; i++)
        buf[i] = (unsigned char)rng();

    /* Every length 0..5000 at a varying offset, plus random seeds. */
    for (size_t len = 0; len <= 5000; len++) {
        size_t off = (len * 7 + (size_t)(rng() % 3)) % 16;
        uint32_t seed = (len & 1) ? (uint32_t)rng() : 0;
        for (size_t i = 0; i < nimpl; i++) {
            check_one(impls[i].name, impls[i].f, buf, off, len, seed);
            if (len % 7 == 0)
                check_chain(impls[i].name, impls[i].f, buf, off, len);
        }
    }

    /* Sizes straddling the 3-way block boundaries, at all 8 misalignments. */
    const size_t sizes[] = {
        3 * 256 - 1,       3 * 256,           3 * 256 + 1,
        3 * 256 + 7,       6 * 256 + 5,       3 * 8192 - 8,
        3 * 8192 - 1,      3 * 8192,          3 * 8192 + 1,
        3 * 8192 + 768,    3 * 8192 + 775,    6 * 8192 + 3 * 256 + 9,
        9 * 8192 - 1,      (1u << 20) + 3,    big - 13,
        big,
    };
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (size_t off = 0; off < 8; off++) {
            size_t len = sizes[s];
            if (off + len > big + 64)
                continue;
            uint32_t seed = (uint32_t)rng();
            for (size_t i = 0; i < nimpl; i++) {
                check_one(impls[i].name, impls[i].f, buf, off, len, seed);
                check_chain(impls[i].name, impls[i].f, buf, off, len);
            }
        }
    }

    /* Random large lengths and offsets. */
    for (int t = 0; t < 40; t++) {
        size_t off = (size_t)(rng() % 64);
        size_t len = (size_t)(rng() % (big - 64));
        for (size_t i = 0; i < nimpl; i++) {
            check_one(impls[i].name, impls[i].f, buf, off, len, 0);
            check_chain(impls[i].name, impls[i].f, buf, off, len);
        }
    }

    /* hw and sw must agree exactly on arbitrary inputs. */
    for (int t = 0; t < 2000; t++) {
        size_t off = (size_t)(rng() % 64);
        size_t len = (size_t)(rng() % 100000);
        uint32_t seed = (uint32_t)rng();
        check("hw-vs-sw", "dispatch", off, len,
              shmlog_crc32c(seed, buf + off, len),
              shmlog_crc32c_sw(seed, buf + off, len));
    }
    free(buf);

    printf("correctness: %s (%d failures)\n", failures ? "FAIL" : "ok",
           failures);

    /* Throughput, best of several runs on 64 MiB. */
    const size_t blen = (size_t)64 << 20;
    unsigned char *b = malloc(blen);
    if (!b)
        return 2;
    for (size_t i = 0; i < blen; i++)
        b[i] = (unsigned char)(i * 131u + (i >> 9));
    uint32_t sink = 0;
    double hw = bench(shmlog_crc32c, b, blen, 10, &sink);
    double sw = bench(shmlog_crc32c_sw, b, blen, 5, &sink);
    printf("throughput 64 MiB: dispatch(hw=%d) %.2f GB/s, sw %.2f GB/s\n",
           shmlog_crc32c_hw(), hw, sw);

    /* Cache-resident record sizes: what a log append typically checksums.
     * Each timed run is many back-to-back calls on the same record. */
    const size_t rec[] = {64, 256, 1024, 4096, 65536};
    for (size_t r = 0; r < sizeof rec / sizeof rec[0]; r++) {
        size_t n = rec[r], calls = ((size_t)64 << 20) / n;
        double best[2] = {1e30, 1e30};
        for (int run = 0; run < 5; run++) {
            for (size_t i = 0; i < nimpl; i++) {
                double t0 = now_sec();
                for (size_t k = 0; k < calls; k++)
                    sink ^= impls[i].f(sink, b + (k & 7), n);
                double dt = now_sec() - t0;
                if (dt < best[i])
                    best[i] = dt;
            }
        }
        printf("record %6zu B: dispatch %.2f GB/s, sw %.2f GB/s\n", n,
               (double)(calls * n) / best[0] / 1e9,
               (double)(calls * n) / best[1] / 1e9);
    }
    printf("(sink %08x)\n", (unsigned)sink);
    free(b);
    return failures ? 1 : 0;
}
