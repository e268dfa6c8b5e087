/* Scalars mod L (see nt_sc25519.h). VARIABLE TIME: public data only. */
#include "nt_sc25519.h"

#include <string.h>

#include "nt_fe25519.h" /* nt_u128 */

/* L = 2^252 + 27742317777372353535851937790883648493 (RFC 8032 section 5.1),
 * in 64-bit limbs, least significant first. */
static const uint64_t L[4] = {UINT64_C(0x5812631a5cf5d3ed), UINT64_C(0x14def9dea2f79cd6), 0,
                              UINT64_C(0x1000000000000000)};

/* MU = floor(2^512 / L), a 260-bit number, for Barrett reduction; computed with
 * Python's integers: 2**512 // L. */
static const uint64_t MU[5] = {UINT64_C(0xed9ce5a30a2c131b), UINT64_C(0x2106215d086329a7),
                               UINT64_C(0xffffffffffffffeb), UINT64_C(0xffffffffffffffff),
                               UINT64_C(0xf)};

static uint64_t load64_le(const uint8_t *s)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = (v << 8) | s[i];
    return v;
}

/* 1 if the 4-limb a >= L (any higher limbs are the caller's to check). */
static int ge_l(const uint64_t a[4])
{
    for (int i = 3; i >= 0; i--) {
        if (a[i] != L[i])
            return a[i] > L[i];
    }
    return 1;
}

int nt_sc_is_canonical(const uint8_t s[32])
{
    uint64_t a[4];

    for (int i = 0; i < 4; i++)
        a[i] = load64_le(s + 8 * i);
    return !ge_l(a);
}

void nt_sc_reduce(uint8_t out[32], const uint8_t in[64])
{
    uint64_t x[8], prod[13], r[5], ql[5];
    const uint64_t *q = prod + 8;
    uint64_t borrow = 0;

    for (int i = 0; i < 8; i++)
        x[i] = load64_le(in + 8 * i);
    /* q = floor(x * MU / 2^512): MU <= 2^512 / L, so q <= x / L, and
     * x / L - x * MU / 2^512 < x / 2^512 < 1, so q is floor(x / L) or one less. */
    memset(prod, 0, sizeof(prod));
    for (int i = 0; i < 8; i++) {
        uint64_t carry = 0;
        for (int j = 0; j < 5; j++) {
            nt_u128 t = (nt_u128)x[i] * MU[j] + prod[i + j] + carry;
            prod[i + j] = (uint64_t)t;
            carry = (uint64_t)(t >> 64);
        }
        prod[i + 5] = carry;
    }
    /* r = x - q * L < 2L < 2^254: computed mod 2^320 with the low 5 limbs only. */
    memset(ql, 0, sizeof(ql));
    for (int i = 0; i < 5; i++) {
        uint64_t carry = 0;
        for (int j = 0; j < 4 && i + j < 5; j++) {
            nt_u128 t = (nt_u128)q[i] * L[j] + ql[i + j] + carry;
            ql[i + j] = (uint64_t)t;
            carry = (uint64_t)(t >> 64);
        }
        if (i + 4 < 5)
            ql[i + 4] += carry; /* (a carry out of limb 4 is dropped: mod 2^320) */
    }
    for (int i = 0; i < 5; i++) {
        uint64_t d = x[i] - ql[i];
        uint64_t b = x[i] < ql[i];
        r[i] = d - borrow;
        borrow = b | (d < borrow);
    }
    while (r[4] != 0 || ge_l(r)) { /* at most once */
        borrow = 0;
        for (int i = 0; i < 5; i++) {
            uint64_t li = i < 4 ? L[i] : 0;
            uint64_t d = r[i] - li;
            uint64_t b = r[i] < li;
            r[i] = d - borrow;
            borrow = b | (d < borrow);
        }
    }
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 8; j++)
            out[8 * i + j] = (uint8_t)(r[i] >> (8 * j));
    }
}

/* x >>= n for 0 < n < 64 over 5 limbs. */
static void shift_right(uint64_t x[5], unsigned n)
{
    for (int i = 0; i < 4; i++)
        x[i] = (x[i] >> n) | (x[i + 1] << (64 - n));
    x[4] >>= n;
}

int nt_sc_wnaf(int8_t naf[256], const uint8_t k[32], int w)
{
    const uint64_t window = (UINT64_C(1) << w) - 1;
    const int half = 1 << (w - 1);
    uint64_t x[5];
    int pos = 0, top = 0;

    memset(naf, 0, 256);
    for (int i = 0; i < 4; i++)
        x[i] = load64_le(k + 8 * i);
    x[4] = 0; /* room for the carry of negative digits */
    while ((x[0] | x[1] | x[2] | x[3] | x[4]) != 0 && pos < 256) {
        if (x[0] == 0) {
            x[0] = x[1], x[1] = x[2], x[2] = x[3], x[3] = x[4], x[4] = 0;
            pos += 64;
        } else if ((x[0] & 1) == 0) {
            unsigned tz = (unsigned)__builtin_ctzll(x[0]);
            shift_right(x, tz);
            pos += (int)tz;
        } else {
            int d = (int)(x[0] & window);
            if (d >= half) {
                /* digit d - 2^w < 0: x += 2^w - d clears the low w bits */
                uint64_t add = (uint64_t)((1 << w) - d);
                d -= 1 << w;
                for (int i = 0; i < 5 && add != 0; i++) {
                    x[i] += add;
                    add = x[i] < add;
                }
            } else {
                x[0] -= (uint64_t)d;
            }
            if (pos < 256) {
                naf[pos] = (int8_t)d;
                top = pos + 1;
            }
            shift_right(x, (unsigned)w);
            pos += w;
        }
    }
    return top;
}
