/* crc32c.c — CRC32C (Castagnoli) for shmlog record checksums.
 *
 * Three implementations with the same results:
 *   - x86-64 with AVX-512 and VPCLMULQDQ: carry-less-multiply folding, 256
 *     bytes a loop, for buffers from 256 bytes to 2 MiB (a batch, a frame);
 *   - x86-64 with SSE4.2: the `crc32` instruction over three interleaved
 *     streams, recombined with "shift by N zero bytes" tables;
 *   - everywhere else: slicing-by-8 tables.
 * The choice is made once, at first use, from a runtime CPU check, so the
 * file builds without -msse4.2 and the wheel still runs on older CPUs.
 *
 * Internally a CRC "register" is the un-inverted state; the public functions
 * apply the init/final xor (~0) at the boundary, which is what makes
 * chaining (passing a previous result back in) work.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define SHMLOG_CRC32C_X86 1
#else
#define SHMLOG_CRC32C_X86 0
#endif
/* target("vpclmulqdq") and __builtin_cpu_supports("vpclmulqdq"): GCC 8+, clang */
#if SHMLOG_CRC32C_X86 && (defined(__clang__) || __GNUC__ >= 8)
#include <immintrin.h>
#define SHMLOG_CRC32C_FOLD 1
#else
#define SHMLOG_CRC32C_FOLD 0
#endif

#define CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

/* Slicing-by-8: sw_table[k][b] is the register contribution of byte b
 * followed by k zero bytes, so eight input bytes cost eight independent
 * lookups instead of eight dependent shift/xor rounds. */
static uint32_t sw_table[8][256];

#if SHMLOG_CRC32C_X86
/* The crc32 instruction has a latency of 3 cycles but can issue one per
 * cycle, so a single dependent chain uses a third of the hardware. We run
 * three independent chains over three adjacent blocks and then stitch them
 * together: CRC(A||B) = shift(CRC(A), |B|) ^ CRC_from_zero(B), where
 * shift(c, n) advances a register over n zero bytes. That operator is
 * linear over GF(2), so it is four 256-entry table lookups (one per byte of
 * the register). Two block sizes: long blocks make the stitching cost
 * negligible on big buffers, short ones keep medium buffers on three
 * streams too. */
#define LONG_BLOCK 8192u
#define SHORT_BLOCK 256u
struct shift_table {
    uint32_t t[4][256];
};
static struct shift_table shift_long, shift_short;
#endif
static int use_hw; /* SHMLOG_CRC32C_PATH_*: the best this CPU runs */

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

/* ---- GF(2) polynomial helpers (table construction only) -------------- */

#if SHMLOG_CRC32C_X86
/* a * b mod P in the reflected representation (bit 31 is x^0). */
static uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
    uint32_t prod = 0;
    for (int i = 0; i < 32; i++) {
        if (a & (0x80000000u >> i))
            prod ^= b;
        /* b *= x: in reflected form that is a right shift, reducing by P
         * when x^31 falls off the end. */
        b = (b >> 1) ^ (CRC32C_POLY & (0u - (b & 1u)));
    }
    return prod;
}

/* x^e mod P, by squaring */
static uint32_t x_pow_bits(uint64_t e)
{
    uint32_t result = 0x80000000u; /* x^0 */
    uint32_t base = 0x40000000u;   /* x^1 */
    while (e) {
        if (e & 1u)
            result = gf2_mulmod(result, base);
        base = gf2_mulmod(base, base);
        e >>= 1;
    }
    return result;
}

/* x^(8*nbytes) mod P: multiplying a register by this advances it over
 * nbytes zero bytes. */
static uint32_t x_pow_8n(uint32_t nbytes)
{
    return x_pow_bits((uint64_t)nbytes * 8u);
}

static void build_shift_table(struct shift_table *st, uint32_t nbytes)
{
    uint32_t op = x_pow_8n(nbytes);
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++)
            st->t[k][b] = gf2_mulmod(op, b << (8 * k));
}

static inline uint32_t crc_shift(const struct shift_table *st, uint32_t crc)
{
    const uint32_t (*t)[256] = st->t;
    return t[0][crc & 0xffu] ^ t[1][(crc >> 8) & 0xffu] ^
           t[2][(crc >> 16) & 0xffu] ^ t[3][crc >> 24];
}
#endif

#if SHMLOG_CRC32C_FOLD
static void build_fold_constants(void);
#endif

/* pthread_once gives a race-free one-time build; the tables are then only
 * read, and the once-check on the hot path is a single load and branch. */
static void init_tables(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        sw_table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = sw_table[0][b];
        for (int k = 1; k < 8; k++) {
            c = (c >> 8) ^ sw_table[0][c & 0xffu];
            sw_table[k][b] = c;
        }
    }
#if SHMLOG_CRC32C_X86
    build_shift_table(&shift_long, LONG_BLOCK);
    build_shift_table(&shift_short, SHORT_BLOCK);
    use_hw = __builtin_cpu_supports("sse4.2") ? SHMLOG_CRC32C_PATH_SSE42 : SHMLOG_CRC32C_PATH_TABLE;
#endif
#if SHMLOG_CRC32C_FOLD
    /* libgcc's check of avx512f includes the OS saving the zmm state */
    if (use_hw && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul")) {
        build_fold_constants();
        use_hw = SHMLOG_CRC32C_PATH_FOLD;
    }
#endif
}

static inline void ensure_init(void)
{
    (void)pthread_once(&tables_once, init_tables);
}

/* ---- portable path ----------------------------------------------------- */

/* Byte-assembled little-endian load: correct on any endianness and
 * alignment; compilers fold it into one load on little-endian targets. */
static inline uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint32_t crc32c_sw_raw(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        uint32_t lo = crc ^ load_le32(p);
        uint32_t hi = load_le32(p + 4);
        crc = sw_table[7][lo & 0xffu] ^ sw_table[6][(lo >> 8) & 0xffu] ^
              sw_table[5][(lo >> 16) & 0xffu] ^ sw_table[4][lo >> 24] ^
              sw_table[3][hi & 0xffu] ^ sw_table[2][(hi >> 8) & 0xffu] ^
              sw_table[1][(hi >> 16) & 0xffu] ^ sw_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ sw_table[0][(crc ^ *p++) & 0xffu];
    return crc;
}

/* ---- SSE4.2 path ------------------------------------------------------- */

#if SHMLOG_CRC32C_X86
static inline uint64_t load_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v); /* no aliasing/alignment UB; becomes one mov */
    return v;
}

/* Consume as many runs of three `block`-byte blocks as fit, three chains
 * at a time, and fold them back into one register. */
__attribute__((target("sse4.2")))
static inline uint64_t crc32c_hw_3way(uint64_t c0, const unsigned char **pp,
                                      size_t *plen, size_t block,
                                      const struct shift_table *shift)
{
    const unsigned char *p = *pp;
    size_t len = *plen;
    while (len >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + block;
        do {
            c0 = _mm_crc32_u64(c0, load_u64(p));
            c1 = _mm_crc32_u64(c1, load_u64(p + block));
            c2 = _mm_crc32_u64(c2, load_u64(p + 2 * block));
            p += 8;
        } while (p < end);
        c0 = crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc_shift(shift, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * block;
        len -= 3 * block;
    }
    *pp = p;
    *plen = len;
    return c0;
}

/* what is left after the blocks: one crc32 stream, 8 bytes then 1 */
__attribute__((target("sse4.2")))
static inline uint32_t crc32c_hw_tail(uint64_t c, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        c = _mm_crc32_u64(c, load_u64(p));
        p += 8;
        len -= 8;
    }
    uint32_t crc = (uint32_t)c;
    while (len--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw_raw(uint32_t crc, const unsigned char *p, size_t len)
{
    /* Align so the 8-byte loads never straddle a cache line. */
    while (len && ((uintptr_t)p & 7u)) {
        crc = _mm_crc32_u8(crc, *p++);
        len--;
    }
    uint64_t c = crc;
    c = crc32c_hw_3way(c, &p, &len, LONG_BLOCK, &shift_long);
    c = crc32c_hw_3way(c, &p, &len, SHORT_BLOCK, &shift_short);
    return crc32c_hw_tail(c, p, len);
}
#endif

/* ---- AVX-512 + VPCLMULQDQ folding path ------------------------------- */

#if SHMLOG_CRC32C_FOLD
/* Folding (Intel, "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ"): a 128-bit lane of the message, L (its first 8 bytes) and H
 * (its next 8), stands for L*x^64 + H, and moving it d bytes further down
 * the message multiplies it by x^(8d). Mod P that is L*(x^(8d+64) mod P) +
 * H*(x^(8d) mod P), two carry-less multiplies whose product (< 128 bits)
 * is XORed into the lane d bytes on. In the reflected bit order a carry-
 * less product comes out multiplied by x once more, hence the -1 in the
 * exponents. Four zmm registers are 16 lanes, folded 256 bytes a loop;
 * what is left at the end is one lane, whose CRC the crc32 instruction
 * computes, then the tail. In cache, folding is several times faster than
 * three interleaved crc32 streams (figures: bench/README.md, CRC). From
 * memory (buffers past the L2) one folding stream keeps fewer loads in
 * flight than three crc32 streams, so those go there. */
#define FOLD_MIN 256u
#define FOLD_MAX (2u << 20)
/* A consumer's CRC is the first touch of a batch the producer's core just
 * wrote: each line crosses between the cores' caches, and prefetching 2 KiB
 * ahead keeps more of those transfers in flight (bench/README.md has the
 * W2 figures). Prefetching past the buffer is harmless, never a fault. */
#define FOLD_PREFETCH 2048
static uint64_t fold_k[7][2]; /* lane constants to fold 256, 192, 128, 64, 48, 32, 16 bytes on */
static const uint32_t fold_dist[7] = {256, 192, 128, 64, 48, 32, 16};

static void build_fold_constants(void)
{
    /* the 32-bit reflected remainder in the top half: bit 63-k is x^k,
     * the same order as the message qword it multiplies */
    for (int i = 0; i < 7; i++) {
        fold_k[i][0] = (uint64_t)x_pow_bits(8ull * fold_dist[i] + 63) << 32;
        fold_k[i][1] = (uint64_t)x_pow_bits(8ull * fold_dist[i] - 1) << 32;
    }
}

#define FOLD_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

FOLD_TARGET static inline __m128i fold_lane_k(int i)
{
    return _mm_set_epi64x((long long)fold_k[i][1], (long long)fold_k[i][0]);
}

FOLD_TARGET static inline __m512i fold512(__m512i x, __m512i k, __m512i next)
{
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00),
                                     _mm512_clmulepi64_epi128(x, k, 0x11), next, 0x96);
}

FOLD_TARGET static inline __m128i fold128(__m128i x, __m128i k, __m128i next)
{
    return _mm_ternarylogic_epi64(_mm_clmulepi64_si128(x, k, 0x00),
                                  _mm_clmulepi64_si128(x, k, 0x11), next, 0x96);
}

/* len >= FOLD_MIN */
FOLD_TARGET static uint32_t crc32c_fold_raw(uint32_t crc, const unsigned char *p, size_t len)
{
    __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64),
            x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
    /* a starting register is the same as XORing it into the first 4 bytes */
    x0 = _mm512_xor_si512(x0, _mm512_castsi128_si512(_mm_cvtsi32_si128((int)crc)));
    p += 256;
    len -= 256;
    __m512i k = _mm512_broadcast_i32x4(fold_lane_k(0));
    while (len >= 256) {
        _mm_prefetch((const char *)p + FOLD_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)p + FOLD_PREFETCH + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)p + FOLD_PREFETCH + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)p + FOLD_PREFETCH + 192, _MM_HINT_T0);
        x0 = fold512(x0, k, _mm512_loadu_si512(p));
        x1 = fold512(x1, k, _mm512_loadu_si512(p + 64));
        x2 = fold512(x2, k, _mm512_loadu_si512(p + 128));
        x3 = fold512(x3, k, _mm512_loadu_si512(p + 192));
        p += 256;
        len -= 256;
    }
    x3 = fold512(x0, _mm512_broadcast_i32x4(fold_lane_k(1)), x3);
    x3 = fold512(x1, _mm512_broadcast_i32x4(fold_lane_k(2)), x3);
    k = _mm512_broadcast_i32x4(fold_lane_k(3));
    x3 = fold512(x2, k, x3);
    while (len >= 64) {
        x3 = fold512(x3, k, _mm512_loadu_si512(p));
        p += 64;
        len -= 64;
    }
    __m128i v = _mm512_extracti32x4_epi32(x3, 3);
    v = fold128(_mm512_extracti32x4_epi32(x3, 0), fold_lane_k(4), v);
    v = fold128(_mm512_extracti32x4_epi32(x3, 1), fold_lane_k(5), v);
    __m128i k16 = fold_lane_k(6);
    v = fold128(_mm512_extracti32x4_epi32(x3, 2), k16, v);
    while (len >= 16) {
        v = fold128(v, k16, _mm_loadu_si128((const __m128i *)(const void *)p));
        p += 16;
        len -= 16;
    }
    /* the lane left is the whole message so far; from register 0 the crc32
     * instruction gives its remainder, and goes on over the tail */
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(v));
    c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(v, 1));
    return crc32c_hw_tail(c, p, len);
}
#endif

static uint32_t crc32c_raw(int path, uint32_t crc, const unsigned char *p, size_t len)
{
#if SHMLOG_CRC32C_FOLD
    if (path >= SHMLOG_CRC32C_PATH_FOLD && len >= FOLD_MIN && len <= FOLD_MAX)
        return crc32c_fold_raw(crc, p, len);
#endif
#if SHMLOG_CRC32C_X86
    if (path >= SHMLOG_CRC32C_PATH_SSE42)
        return crc32c_hw_raw(crc, p, len);
#endif
    (void)path;
    return crc32c_sw_raw(crc, p, len);
}

/* ---- public API -------------------------------------------------------- */

uint32_t shmlog_crc32c(uint32_t crc, const void *buf, size_t len)
{
    ensure_init();
    return ~crc32c_raw(use_hw, ~crc, (const unsigned char *)buf, len);
}

uint32_t shmlog_crc32c_path(int path, uint32_t crc, const void *buf, size_t len)
{
    ensure_init();
    return ~crc32c_raw(path < use_hw ? path : use_hw, ~crc, (const unsigned char *)buf, len);
}

uint32_t shmlog_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    ensure_init();
    return ~crc32c_sw_raw(~crc, (const unsigned char *)buf, len);
}

int shmlog_crc32c_hw(void)
{
    ensure_init();
    return use_hw;
}
