/* AES-GCM on VAES and VPCLMULQDQ with 256-bit registers: see nt_gcm.h.
 *
 * Counter mode takes 16 blocks per step (8 registers of 2 blocks), and GHASH
 * folds 16 ciphertext blocks into the accumulator with H^16..H^1 and a single
 * reduction. GHASH runs as POLYVAL (RFC 8452, appendix A), whose
 * bit order is that of the carry-less multiply: a product a*b*x^-128 is
 * reduced with two multiplications by x^57 + x^62 + x^63 (Montgomery style). */
#include "nt_gcm.h"

#include <openssl/crypto.h>
#include <string.h>

#include "nt_common.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#define NT_TARGET __attribute__((target("sse4.1,ssse3,aes,pclmul,avx,avx2,vaes,vpclmulqdq")))

#define X128(a, b) _mm_xor_si128((a), (b))
#define X256(a, b) _mm256_xor_si256((a), (b))
#define LOAD128(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define STORE128(p, v) _mm_storeu_si128((__m128i *)(void *)(p), (v))
#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define STORE256(p, v) _mm256_storeu_si256((__m256i *)(void *)(p), (v))

/* Where OpenSSL 3.5 runs its VAES code on AVX-512 (its own test: VAES,
 * VPCLMULQDQ, AVX512F, DQ, BW and VL), that code is left to it. */
int nt_gcm_supported(void)
{
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1")
          && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("aes")
          && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("vaes")
          && __builtin_cpu_supports("vpclmulqdq")))
        return 0;
    return !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
             && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"));
}

NT_TARGET static inline __m128i bswap128(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* lo, mid, hi += the partial products of a*b (mid: the two cross terms). */
NT_TARGET static inline void mul_acc(__m128i a, __m128i b, __m128i *lo, __m128i *mid, __m128i *hi)
{
    *lo = X128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
    *hi = X128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
    *mid = X128(*mid, X128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10)));
}

/* (hi*x^128 + mid*x^64 + lo) * x^-128 modulo x^128 + x^127 + x^126 + x^121 + 1.
 * That polynomial is 1 modulo x^64, so each step adds the low 64 bits L times
 * it, which clears them, and divides by x^64: the value becomes
 * (value >> 64) + L*x^64 + L*(x^57 + x^62 + x^63). Two steps leave 128 bits. */
NT_TARGET static inline __m128i reduce(__m128i lo, __m128i mid, __m128i hi)
{
    const __m128i c = _mm_set_epi64x(0, (long long)0xc200000000000000ULL);
    __m128i t;

    lo = X128(lo, _mm_slli_si128(mid, 8));
    hi = X128(hi, _mm_srli_si128(mid, 8));
    t = _mm_clmulepi64_si128(lo, c, 0x00);
    lo = X128(_mm_shuffle_epi32(lo, 0x4e), t);
    t = _mm_clmulepi64_si128(lo, c, 0x00);
    lo = X128(_mm_shuffle_epi32(lo, 0x4e), t);
    return X128(hi, lo);
}

NT_TARGET static inline __m128i dot(__m128i a, __m128i b)
{
    __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
    mul_acc(a, b, &lo, &mid, &hi);
    return reduce(lo, mid, hi);
}

NT_TARGET static inline __m128i aes_block(const nt_gcm_key *k, __m128i x)
{
    x = X128(x, LOAD128(k->rk[0]));
    for (int i = 1; i < k->rounds; i++)
        x = _mm_aesenc_si128(x, LOAD128(k->rk[i]));
    return _mm_aesenclast_si128(x, LOAD128(k->rk[k->rounds]));
}

/* The counter block of counter c: nonce || big-endian c. */
NT_TARGET static inline __m128i counter_block(const nt_gcm_run *r, uint32_t c)
{
    return _mm_insert_epi32(LOAD128(r->iv), (int)__builtin_bswap32(c), 3);
}

/* Each 32-bit word of k xored with the words before it (FIPS 197 key expansion). */
NT_TARGET static inline __m128i prefix_xor(__m128i k)
{
    k = X128(k, _mm_slli_si128(k, 4));
    return X128(k, _mm_slli_si128(k, 8));
}

/* FIPS 197, 5.2: w[i] = w[i-Nk] ^ temp, temp from the word before, through
 * aeskeygenassist: its word 3 is RotWord(SubWord(X[3])) ^ rcon, its word 2
 * SubWord(X[3]). */
#define NEXT_A(prev, from, rcon)                                                             \
    X128(prefix_xor(prev), _mm_shuffle_epi32(_mm_aeskeygenassist_si128((from), (rcon)), 0xff))
#define NEXT_B(prev, from)                                                                   \
    X128(prefix_xor(prev), _mm_shuffle_epi32(_mm_aeskeygenassist_si128((from), 0x00), 0xaa))

NT_TARGET static void expand_key(__m128i rk[NT_GCM_MAX_ROUNDS + 1], const uint8_t *key,
                                 size_t key_len)
{
    __m128i a = LOAD128(key), b;

    rk[0] = a;
    if (key_len == 16) {
        rk[1] = a = NEXT_A(a, a, 0x01);
        rk[2] = a = NEXT_A(a, a, 0x02);
        rk[3] = a = NEXT_A(a, a, 0x04);
        rk[4] = a = NEXT_A(a, a, 0x08);
        rk[5] = a = NEXT_A(a, a, 0x10);
        rk[6] = a = NEXT_A(a, a, 0x20);
        rk[7] = a = NEXT_A(a, a, 0x40);
        rk[8] = a = NEXT_A(a, a, 0x80);
        rk[9] = a = NEXT_A(a, a, 0x1b);
        rk[10] = NEXT_A(a, a, 0x36);
        return;
    }
    rk[1] = b = LOAD128(key + 16);
    rk[2] = a = NEXT_A(a, b, 0x01);
    rk[3] = b = NEXT_B(b, a);
    rk[4] = a = NEXT_A(a, b, 0x02);
    rk[5] = b = NEXT_B(b, a);
    rk[6] = a = NEXT_A(a, b, 0x04);
    rk[7] = b = NEXT_B(b, a);
    rk[8] = a = NEXT_A(a, b, 0x08);
    rk[9] = b = NEXT_B(b, a);
    rk[10] = a = NEXT_A(a, b, 0x10);
    rk[11] = b = NEXT_B(b, a);
    rk[12] = a = NEXT_A(a, b, 0x20);
    rk[13] = b = NEXT_B(b, a);
    rk[14] = NEXT_A(a, b, 0x40);
}

/* mulX_POLYVAL (RFC 8452, appendix A): v * x modulo the POLYVAL polynomial. */
static void mul_x(uint8_t v[NT_GCM_BLOCK])
{
    uint64_t lo, hi, mask;

    memcpy(&lo, v, 8); /* (x86-64: little-endian, as POLYVAL's blocks) */
    memcpy(&hi, v + 8, 8);
    mask = 0 - (hi >> 63);
    hi = (hi << 1 | lo >> 63) ^ (mask & 0xc200000000000000ULL);
    lo = lo << 1 ^ (mask & 1);
    memcpy(v, &lo, 8);
    memcpy(v + 8, &hi, 8);
    OPENSSL_cleanse(&lo, sizeof(lo));
    OPENSSL_cleanse(&hi, sizeof(hi));
}

NT_TARGET static void set_key(nt_gcm_key *k, const uint8_t *key, size_t key_len)
{
    __m128i rk[NT_GCM_MAX_ROUNDS + 1], h1, p;
    uint8_t h[NT_GCM_BLOCK];

    expand_key(rk, key, key_len);
    k->rounds = key_len == 16 ? 10 : 14;
    for (int i = 0; i <= k->rounds; i++) {
        STORE128(k->rk[i], rk[i]);
        STORE128(k->rk[i] + NT_GCM_BLOCK, rk[i]);
    }
    STORE128(h, bswap128(aes_block(k, _mm_setzero_si128())));
    mul_x(h);
    p = h1 = LOAD128(h);
    for (int i = 1; i <= NT_GCM_POWERS; i++) {
        if (i > 1)
            p = dot(p, h1);
        STORE128(k->hp[NT_GCM_POWERS - i], p);
        /* (Karatsuba's h_lo ^ h_hi, in both halves) */
        STORE128(k->hk[NT_GCM_POWERS - i], X128(_mm_unpacklo_epi64(p, p), _mm_unpackhi_epi64(p, p)));
    }
    OPENSSL_cleanse(rk, sizeof(rk));
    OPENSSL_cleanse(h, sizeof(h));
}

int nt_gcm_set_key(nt_gcm_key *k, const uint8_t *key, size_t key_len)
{
    if (k == NULL || key == NULL)
        return NT_ERR_ARG;
    if (key_len != 16 && key_len != 32)
        return NT_ERR_LENGTH;
    if (!nt_gcm_supported())
        return NT_ERR_STATE;
    set_key(k, key, key_len);
    return NT_OK;
}

/* acc = (acc ^ block) * H, for one whole block in GCM's byte order. */
NT_TARGET static inline void ghash_one(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t *block)
{
    __m128i acc = X128(LOAD128(r->acc), bswap128(LOAD128(block)));
    STORE128(r->acc, dot(acc, LOAD128(k->hp[NT_GCM_POWERS - 1])));
}

NT_TARGET static void start(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t *nonce,
                            const uint8_t *aad, size_t aad_len)
{
    memset(r, 0, sizeof(*r));
    memcpy(r->iv, nonce, NT_GCM_NONCE_BYTES);
    STORE128(r->ekj0, aes_block(k, counter_block(r, 1)));
    r->ctr = 2;
    r->aad_len = aad_len;
    for (; aad_len >= NT_GCM_BLOCK; aad += NT_GCM_BLOCK, aad_len -= NT_GCM_BLOCK)
        ghash_one(k, r, aad);
    if (aad_len > 0) {
        memcpy(r->part, aad, aad_len); /* (zero-padded: r was cleared) */
        ghash_one(k, r, r->part);
        memset(r->part, 0, sizeof(r->part));
    }
}

void nt_gcm_start(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t nonce[NT_GCM_NONCE_BYTES],
                  const uint8_t *aad, size_t aad_len)
{
    start(k, r, nonce, aad, aad_len);
}

#define NT_GCM_LANES (NT_GCM_POWERS / 2) /* registers of 2 blocks per step */
#define NT_GCM_STEP (NT_GCM_POWERS * NT_GCM_BLOCK)
/* Loops over the registers of a step are unrolled, so that they stay registers. */
#define NT_UNROLL _Pragma("GCC unroll 8")

/* GHASH of one step's ciphertext, g (byte-reversed), into acc: the oldest block
 * (lane 0 of g[0]) takes the accumulator and H^16, the newest H^1; one reduction. */
NT_TARGET static inline __m128i ghash_step(const nt_gcm_key *k, __m256i g[NT_GCM_LANES],
                                           __m128i acc)
{
    __m256i lo, mid, hi, h, d;
    __m128i l, m, u;

    /* Karatsuba: the cross terms come from (d_lo ^ d_hi) * (h_lo ^ h_hi),
     * less lo and hi, which are subtracted once for the whole step. */
    d = X256(g[0], _mm256_zextsi128_si256(acc));
    h = LOAD256(k->hp[0]);
    lo = _mm256_clmulepi64_epi128(d, h, 0x00);
    hi = _mm256_clmulepi64_epi128(d, h, 0x11);
    mid = _mm256_clmulepi64_epi128(X256(d, _mm256_shuffle_epi32(d, 0x4e)), LOAD256(k->hk[0]),
                                   0x00);
    NT_UNROLL
    for (int j = 1; j < NT_GCM_LANES; j++) {
        d = g[j];
        h = LOAD256(k->hp[2 * j]);
        lo = X256(lo, _mm256_clmulepi64_epi128(d, h, 0x00));
        hi = X256(hi, _mm256_clmulepi64_epi128(d, h, 0x11));
        mid = X256(mid, _mm256_clmulepi64_epi128(X256(d, _mm256_shuffle_epi32(d, 0x4e)),
                                                 LOAD256(k->hk[2 * j]), 0x00));
    }
    l = X128(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
    m = X128(_mm256_castsi256_si128(mid), _mm256_extracti128_si256(mid, 1));
    u = X128(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
    return reduce(l, X128(m, X128(l, u)), u);
}

/* The keystream of one step: x[j] = E(K, counters 2j and 2j + 1 of the step). */
NT_TARGET static inline void keystream_step(const nt_gcm_key *k, __m256i *cv,
                                            __m256i x[NT_GCM_LANES])
{
    const __m256i order = _mm256_broadcastsi128_si256(
        _mm_set_epi8(12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
    const __m256i two = _mm256_set_epi32(2, 0, 0, 0, 2, 0, 0, 0);
    const int rounds = k->rounds;
    __m256i key = LOAD256(k->rk[0]);

    NT_UNROLL
    for (int j = 0; j < NT_GCM_LANES; j++) {
        x[j] = X256(_mm256_shuffle_epi8(*cv, order), key);
        *cv = _mm256_add_epi32(*cv, two);
    }
    for (int i = 1; i < rounds; i++) {
        key = LOAD256(k->rk[i]);
        NT_UNROLL
        for (int j = 0; j < NT_GCM_LANES; j++)
            x[j] = _mm256_aesenc_epi128(x[j], key);
    }
    key = LOAD256(k->rk[rounds]);
    NT_UNROLL
    for (int j = 0; j < NT_GCM_LANES; j++)
        x[j] = _mm256_aesenclast_epi128(x[j], key);
}

/* n steps of 16 blocks: counter mode and GHASH of the ciphertext. Decrypting,
 * a step's GHASH needs only its input; encrypting, it runs one step behind, so
 * that it overlaps the next step's AES rather than waiting for it. */
NT_TARGET static void bulk(const nt_gcm_key *k, nt_gcm_run *r, int enc, const uint8_t *in,
                           uint8_t *out, size_t n)
{
    const __m256i reverse = _mm256_broadcastsi128_si256(
        _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    /* Lane 0 holds counter c, lane 1 counter c + 1, as host-order word 3. */
    __m256i cv = _mm256_add_epi32(
        _mm256_broadcastsi128_si256(_mm_insert_epi32(LOAD128(r->iv), (int)r->ctr, 3)),
        _mm256_set_epi32(1, 0, 0, 0, 0, 0, 0, 0));
    __m256i x[NT_GCM_LANES], g[NT_GCM_LANES];
    __m128i acc = LOAD128(r->acc);

    for (size_t step = 0; step < n; step++, in += NT_GCM_STEP, out += NT_GCM_STEP) {
        keystream_step(k, &cv, x);
        if (enc) {
            if (step > 0)
                acc = ghash_step(k, g, acc); /* the previous step's */
            NT_UNROLL
            for (int j = 0; j < NT_GCM_LANES; j++) {
                __m256i c = X256(x[j], LOAD256(in + 32 * j));
                STORE256(out + 32 * j, c);
                g[j] = _mm256_shuffle_epi8(c, reverse);
            }
        } else {
            NT_UNROLL
            for (int j = 0; j < NT_GCM_LANES; j++)
                g[j] = LOAD256(in + 32 * j);
            NT_UNROLL
            for (int j = 0; j < NT_GCM_LANES; j++) {
                STORE256(out + 32 * j, X256(x[j], g[j]));
                g[j] = _mm256_shuffle_epi8(g[j], reverse);
            }
            acc = ghash_step(k, g, acc);
        }
    }
    if (enc && n > 0)
        acc = ghash_step(k, g, acc);
    STORE128(r->acc, acc);
    r->ctr += (uint32_t)(NT_GCM_POWERS * n);
}

/* 1 to 15 whole blocks: counter mode, GHASH with H^n..H^1 and one reduction. */
NT_TARGET static void blocks(const nt_gcm_key *k, nt_gcm_run *r, int enc, const uint8_t *in,
                             uint8_t *out, size_t n)
{
    __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo, acc = LOAD128(r->acc);

    for (size_t j = 0; j < n; j++, in += NT_GCM_BLOCK, out += NT_GCM_BLOCK) {
        __m128i d = LOAD128(in), c = X128(d, aes_block(k, counter_block(r, r->ctr++)));
        STORE128(out, c);
        d = bswap128(enc ? c : d);
        if (j == 0)
            d = X128(d, acc);
        mul_acc(d, LOAD128(k->hp[NT_GCM_POWERS - (n - j)]), &lo, &mid, &hi);
    }
    STORE128(r->acc, reduce(lo, mid, hi));
}

NT_TARGET static void keystream(const nt_gcm_key *k, nt_gcm_run *r)
{
    STORE128(r->ks, aes_block(k, counter_block(r, r->ctr++)));
}

void nt_gcm_update(const nt_gcm_key *k, nt_gcm_run *r, int enc, const uint8_t *in,
                   uint8_t *out, size_t len)
{
    size_t n;

    r->ct_len += len;
    for (; r->npart > 0 && len > 0; in++, out++, len--) { /* finish the block in progress */
        uint8_t v = *in, c = (uint8_t)(v ^ r->ks[r->npart]);
        *out = c;
        r->part[r->npart++] = enc ? c : v;
        if (r->npart == NT_GCM_BLOCK) {
            ghash_one(k, r, r->part);
            r->npart = 0;
        }
    }
    if ((n = len / NT_GCM_STEP) > 0) {
        bulk(k, r, enc, in, out, n);
        in += NT_GCM_STEP * n;
        out += NT_GCM_STEP * n;
        len -= NT_GCM_STEP * n;
    }
    if ((n = len / NT_GCM_BLOCK) > 0) {
        blocks(k, r, enc, in, out, n);
        in += NT_GCM_BLOCK * n;
        out += NT_GCM_BLOCK * n;
        len -= NT_GCM_BLOCK * n;
    }
    if (len > 0) {
        keystream(k, r);
        for (size_t i = 0; i < len; i++) {
            uint8_t v = in[i], c = (uint8_t)(v ^ r->ks[i]);
            out[i] = c;
            r->part[i] = enc ? c : v;
        }
        r->npart = len;
    }
}

NT_TARGET static void compute_tag(const nt_gcm_key *k, nt_gcm_run *r, uint8_t tag[NT_GCM_BLOCK])
{
    const __m128i h1 = LOAD128(k->hp[NT_GCM_POWERS - 1]);
    __m128i acc;

    if (r->npart > 0) {
        memset(r->part + r->npart, 0, NT_GCM_BLOCK - r->npart);
        ghash_one(k, r, r->part);
    }
    /* The lengths block, len(A) || len(C) in bits, byte-reversed. */
    acc = X128(LOAD128(r->acc), _mm_set_epi64x((long long)(r->aad_len * 8),
                                               (long long)(r->ct_len * 8)));
    acc = dot(acc, h1);
    STORE128(tag, X128(bswap128(acc), LOAD128(r->ekj0)));
    OPENSSL_cleanse(r, sizeof(*r));
}

#else /* not x86-64 with GCC or Clang: never used (nt_gcm_supported() is 0) */

int nt_gcm_supported(void)
{
    return 0;
}

int nt_gcm_set_key(nt_gcm_key *k, const uint8_t *key, size_t key_len)
{
    (void)k;
    (void)key;
    return key_len == 16 || key_len == 32 ? NT_ERR_STATE : NT_ERR_LENGTH;
}

void nt_gcm_start(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t nonce[NT_GCM_NONCE_BYTES],
                  const uint8_t *aad, size_t aad_len)
{
    (void)k;
    (void)nonce;
    (void)aad;
    (void)aad_len;
    memset(r, 0, sizeof(*r));
}

void nt_gcm_update(const nt_gcm_key *k, nt_gcm_run *r, int enc, const uint8_t *in,
                   uint8_t *out, size_t len)
{
    (void)k;
    (void)r;
    (void)enc;
    (void)in;
    memset(out, 0, len);
}

static void compute_tag(const nt_gcm_key *k, nt_gcm_run *r, uint8_t tag[NT_GCM_BLOCK])
{
    (void)k;
    memset(tag, 0, NT_GCM_BLOCK);
    OPENSSL_cleanse(r, sizeof(*r));
}

#endif

void nt_gcm_tag(const nt_gcm_key *k, nt_gcm_run *r, uint8_t tag[NT_GCM_TAG_BYTES])
{
    compute_tag(k, r, tag);
}

int nt_gcm_check(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t tag[NT_GCM_TAG_BYTES])
{
    uint8_t mine[NT_GCM_TAG_BYTES];
    int bad;

    compute_tag(k, r, mine);
    bad = CRYPTO_memcmp(mine, tag, NT_GCM_TAG_BYTES);
    OPENSSL_cleanse(mine, sizeof(mine));
    return bad == 0 ? NT_OK : NT_ERR_AUTH;
}
