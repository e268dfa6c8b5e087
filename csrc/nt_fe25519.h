/* Arithmetic in GF(p), p = 2^255 - 19, for the Ed25519 verifier (nt_ed25519.c).
 *
 * VARIABLE TIME: written for signature verification, which handles only public
 * data (keys, signatures, messages). Do not use it on secrets.
 *
 * An element is five unsigned 64-bit limbs in radix 2^51: v = sum l[i] * 2^(51 i).
 * Representations are redundant (not reduced mod p, limbs may exceed 2^51);
 * nt_fe_tobytes gives the unique canonical encoding.
 *
 * Limb bounds: a "tight" element has every limb < 2^51 + 2^13; fe_carry, fe_sub,
 * fe_mul, fe_sq and nt_fe_frombytes return tight elements. fe_add and
 * fe_sub_loose do not carry: their outputs are bounded by the sums stated at
 * each. fe_mul and fe_sq accept limbs < 2^54; fe_sub and fe_sub_loose need a
 * subtrahend < 2^53 - 76; fe_carry and nt_fe_tobytes accept limbs < 2^56. The
 * group code (nt_ed25519.c) states the bound of each uncarried value. The
 * multiply and square are static inline so that the group
 * code that calls them thousands of times per verification can inline them. */
#ifndef NT_FE25519_H
#define NT_FE25519_H

#include <stdint.h>

__extension__ typedef unsigned __int128 nt_u128;

typedef struct {
    uint64_t l[5];
} nt_fe;

#define NT_FE_MASK ((UINT64_C(1) << 51) - 1)

/* Carry every limb into the next; the top carry re-enters limb 0 times 19
 * (2^255 = 19 mod p). Inputs with limbs < 2^56 give tight outputs. */
static inline void fe_carry(nt_fe *h)
{
    uint64_t c;

    c = h->l[0] >> 51;
    h->l[0] &= NT_FE_MASK;
    h->l[1] += c;
    c = h->l[1] >> 51;
    h->l[1] &= NT_FE_MASK;
    h->l[2] += c;
    c = h->l[2] >> 51;
    h->l[2] &= NT_FE_MASK;
    h->l[3] += c;
    c = h->l[3] >> 51;
    h->l[3] &= NT_FE_MASK;
    h->l[4] += c;
    c = h->l[4] >> 51;
    h->l[4] &= NT_FE_MASK;
    h->l[0] += 19 * c;
}

static inline void fe_copy(nt_fe *h, const nt_fe *f)
{
    *h = *f;
}

static inline void fe_zero(nt_fe *h)
{
    for (int i = 0; i < 5; i++)
        h->l[i] = 0;
}

static inline void fe_one(nt_fe *h)
{
    fe_zero(h);
    h->l[0] = 1;
}

/* h = f + g, not carried: limbs below the sum of the inputs' bounds. */
static inline void fe_add(nt_fe *h, const nt_fe *f, const nt_fe *g)
{
    for (int i = 0; i < 5; i++)
        h->l[i] = f->l[i] + g->l[i];
}

/* h = f + 4p - g = f - g mod p, not carried: no limb goes negative as long as
 * g's limbs are < 2^53 - 76 (the limbs of 4p are 2^53 - 76 and 2^53 - 4), and
 * h's limbs are below f's bound + 2^53. */
static inline void fe_sub_loose(nt_fe *h, const nt_fe *f, const nt_fe *g)
{
    h->l[0] = (f->l[0] + ((UINT64_C(1) << 53) - 76)) - g->l[0];
    for (int i = 1; i < 5; i++)
        h->l[i] = (f->l[i] + ((UINT64_C(1) << 53) - 4)) - g->l[i];
}

/* h = f - g, carried back to tight (f's limbs must be < 2^55). */
static inline void fe_sub(nt_fe *h, const nt_fe *f, const nt_fe *g)
{
    fe_sub_loose(h, f, g);
    fe_carry(h);
}

/* h = -f */
static inline void fe_neg(nt_fe *h, const nt_fe *f)
{
    nt_fe zero;

    fe_zero(&zero);
    fe_sub(h, &zero, f);
}

/* Reduce the five 128-bit column sums of a product to a tight element: carry
 * column k into column k + 1, the top carry back into limb 0 times 19, then
 * one more carry out of limb 0. Bounds are given at fe_mul. */
static inline void fe_reduce_wide(nt_fe *h, nt_u128 r0, nt_u128 r1, nt_u128 r2, nt_u128 r3,
                                  nt_u128 r4)
{
    uint64_t c;

    r1 += (uint64_t)(r0 >> 51);
    h->l[0] = (uint64_t)r0 & NT_FE_MASK;
    r2 += (uint64_t)(r1 >> 51);
    h->l[1] = (uint64_t)r1 & NT_FE_MASK;
    r3 += (uint64_t)(r2 >> 51);
    h->l[2] = (uint64_t)r2 & NT_FE_MASK;
    r4 += (uint64_t)(r3 >> 51);
    h->l[3] = (uint64_t)r3 & NT_FE_MASK;
    c = (uint64_t)(r4 >> 51);
    h->l[4] = (uint64_t)r4 & NT_FE_MASK;
    h->l[0] += 19 * c;
    c = h->l[0] >> 51;
    h->l[0] &= NT_FE_MASK;
    h->l[1] += c;
}

/* h = f * g. Column k gathers f_i g_j with i + j = k, plus 19 f_i g_j with
 * i + j = k + 5 (those terms carry 2^255 = 19 mod p). Bounds, for limbs < 2^54:
 * 19 g_j < 2^58.3, so every column is < 2^108 + 4 * 2^112.3 < 2^114.3 and every
 * inter-column carry < 2^63.3; column 4 has no factor 19 and is < 2^110.4, so
 * the top carry is < 2^59.4 and 19 times it < 2^63.7: all within 64 bits. The
 * result has limbs < 2^51 except limb 1 (< 2^51 + 2^13). fe_sq has the same
 * bounds (its doubled products 2 f_i * 19 f_j are < 2^113.3). */
static inline __attribute__((always_inline)) void fe_mul(nt_fe *h, const nt_fe *f, const nt_fe *g)
{
    const uint64_t f0 = f->l[0], f1 = f->l[1], f2 = f->l[2], f3 = f->l[3], f4 = f->l[4];
    const uint64_t g0 = g->l[0], g1 = g->l[1], g2 = g->l[2], g3 = g->l[3], g4 = g->l[4];
    const uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    nt_u128 r0, r1, r2, r3, r4;

    r0 = (nt_u128)f0 * g0 + (nt_u128)f1 * g4_19 + (nt_u128)f2 * g3_19 + (nt_u128)f3 * g2_19 +
         (nt_u128)f4 * g1_19;
    r1 = (nt_u128)f0 * g1 + (nt_u128)f1 * g0 + (nt_u128)f2 * g4_19 + (nt_u128)f3 * g3_19 +
         (nt_u128)f4 * g2_19;
    r2 = (nt_u128)f0 * g2 + (nt_u128)f1 * g1 + (nt_u128)f2 * g0 + (nt_u128)f3 * g4_19 +
         (nt_u128)f4 * g3_19;
    r3 = (nt_u128)f0 * g3 + (nt_u128)f1 * g2 + (nt_u128)f2 * g1 + (nt_u128)f3 * g0 +
         (nt_u128)f4 * g4_19;
    r4 = (nt_u128)f0 * g4 + (nt_u128)f1 * g3 + (nt_u128)f2 * g2 + (nt_u128)f3 * g1 +
         (nt_u128)f4 * g0;
    fe_reduce_wide(h, r0, r1, r2, r3, r4);
}

/* h = f^2: fe_mul's columns with the symmetric products f_i f_j (i != j)
 * counted once and doubled. */
static inline __attribute__((always_inline)) void fe_sq(nt_fe *h, const nt_fe *f)
{
    const uint64_t f0 = f->l[0], f1 = f->l[1], f2 = f->l[2], f3 = f->l[3], f4 = f->l[4];
    const uint64_t f0_2 = 2 * f0, f1_2 = 2 * f1, f2_2 = 2 * f2, f3_2 = 2 * f3;
    const uint64_t f3_19 = 19 * f3, f4_19 = 19 * f4;
    nt_u128 r0, r1, r2, r3, r4;

    r0 = (nt_u128)f0 * f0 + (nt_u128)f1_2 * f4_19 + (nt_u128)f2_2 * f3_19;
    r1 = (nt_u128)f0_2 * f1 + (nt_u128)f2_2 * f4_19 + (nt_u128)f3 * f3_19;
    r2 = (nt_u128)f0_2 * f2 + (nt_u128)f1 * f1 + (nt_u128)f3_2 * f4_19;
    r3 = (nt_u128)f0_2 * f3 + (nt_u128)f1_2 * f2 + (nt_u128)f4 * f4_19;
    r4 = (nt_u128)f0_2 * f4 + (nt_u128)f1_2 * f3 + (nt_u128)f2 * f2;
    fe_reduce_wide(h, r0, r1, r2, r3, r4);
}

/* h = f^(2^n), n >= 1 */
static inline void fe_sq_n(nt_fe *h, const nt_fe *f, int n)
{
    fe_sq(h, f);
    for (int i = 1; i < n; i++)
        fe_sq(h, h);
}

/* h = the 255-bit little-endian number in s[0..31], bit 255 ignored. Values
 * from p to 2^255 - 1 are accepted and stand for value - p. */
void nt_fe_frombytes(nt_fe *h, const uint8_t s[32]);

/* s = canonical encoding of f (fully reduced mod p, little-endian, bit 255 = 0). */
void nt_fe_tobytes(uint8_t s[32], const nt_fe *f);

/* 1 if f = 0 mod p, else 0. */
int nt_fe_iszero(const nt_fe *f);

/* 1 if the canonical value of f is odd ("negative" in RFC 8032), else 0. */
int nt_fe_isodd(const nt_fe *f);

/* h = 1 / f (f^(p-2); 0 gives 0). */
void nt_fe_invert(nt_fe *h, const nt_fe *f);

/* h = f^((p-5)/8) = f^(2^252 - 3), the exponent of RFC 8032's square root. */
void nt_fe_pow22523(nt_fe *h, const nt_fe *f);

#endif
