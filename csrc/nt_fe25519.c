/* GF(2^255 - 19): encoding, decoding and exponentiation (see nt_fe25519.h).
 * VARIABLE TIME: for public data only (signature verification). */
#include "nt_fe25519.h"

static uint64_t load64_le(const uint8_t *s)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = (v << 8) | s[i];
    return v;
}

static void store64_le(uint8_t *s, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        s[i] = (uint8_t)v;
        v >>= 8;
    }
}

void nt_fe_frombytes(nt_fe *h, const uint8_t s[32])
{
    const uint64_t w0 = load64_le(s), w1 = load64_le(s + 8), w2 = load64_le(s + 16),
                   w3 = load64_le(s + 24);

    h->l[0] = w0 & NT_FE_MASK;
    h->l[1] = ((w0 >> 51) | (w1 << 13)) & NT_FE_MASK;
    h->l[2] = ((w1 >> 38) | (w2 << 26)) & NT_FE_MASK;
    h->l[3] = ((w2 >> 25) | (w3 << 39)) & NT_FE_MASK;
    h->l[4] = (w3 >> 12) & NT_FE_MASK; /* drops bit 255 */
}

void nt_fe_tobytes(uint8_t s[32], const nt_fe *f)
{
    nt_fe t = *f;

    /* Two carry passes leave every limb < 2^51, so 0 <= t < 2^255 (a carry out
     * of the top limb in the second pass needs a carry out of limb 0 first,
     * which leaves limb 0 small enough to take the 19). */
    fe_carry(&t);
    fe_carry(&t);
    /* p <= t < 2^255 only when limbs 1..4 are all ones and limb 0 >= 2^51 - 19. */
    if (t.l[4] == NT_FE_MASK && t.l[3] == NT_FE_MASK && t.l[2] == NT_FE_MASK &&
        t.l[1] == NT_FE_MASK && t.l[0] >= NT_FE_MASK - 18) {
        t.l[0] -= NT_FE_MASK - 18;
        t.l[1] = t.l[2] = t.l[3] = t.l[4] = 0;
    }
    store64_le(s, t.l[0] | (t.l[1] << 51));
    store64_le(s + 8, (t.l[1] >> 13) | (t.l[2] << 38));
    store64_le(s + 16, (t.l[2] >> 26) | (t.l[3] << 25));
    store64_le(s + 24, (t.l[3] >> 39) | (t.l[4] << 12));
}

int nt_fe_iszero(const nt_fe *f)
{
    uint8_t s[32];
    uint8_t acc = 0;

    nt_fe_tobytes(s, f);
    for (int i = 0; i < 32; i++)
        acc |= s[i];
    return acc == 0;
}

int nt_fe_isodd(const nt_fe *f)
{
    uint8_t s[32];

    nt_fe_tobytes(s, f);
    return s[0] & 1;
}

/* z^(2^250 - 1) into *z250 and z^11 into *z11, by the addition chain
 * 2, 8, 9, 11, 22, 2^5-1, 2^10-1, 2^20-1, 2^40-1, 2^50-1, 2^100-1, 2^200-1,
 * 2^250-1 (each 2^k - 1 from a shorter one by squarings and one multiply). */
static void pow_2_250_1(nt_fe *z250, nt_fe *z11, const nt_fe *z)
{
    nt_fe z2, z9, t, z5, z10, z20, z50, z100;

    fe_sq(&z2, z);             /* z^2 */
    fe_sq_n(&t, &z2, 2);       /* z^8 */
    fe_mul(&z9, &t, z);        /* z^9 */
    fe_mul(z11, &z9, &z2);     /* z^11 */
    fe_sq(&t, z11);            /* z^22 */
    fe_mul(&z5, &t, &z9);      /* z^(2^5 - 1) */
    fe_sq_n(&t, &z5, 5);
    fe_mul(&z10, &t, &z5);     /* z^(2^10 - 1) */
    fe_sq_n(&t, &z10, 10);
    fe_mul(&z20, &t, &z10);    /* z^(2^20 - 1) */
    fe_sq_n(&t, &z20, 20);
    fe_mul(&t, &t, &z20);      /* z^(2^40 - 1) */
    fe_sq_n(&t, &t, 10);
    fe_mul(&z50, &t, &z10);    /* z^(2^50 - 1) */
    fe_sq_n(&t, &z50, 50);
    fe_mul(&z100, &t, &z50);   /* z^(2^100 - 1) */
    fe_sq_n(&t, &z100, 100);
    fe_mul(&t, &t, &z100);     /* z^(2^200 - 1) */
    fe_sq_n(&t, &t, 50);
    fe_mul(z250, &t, &z50);    /* z^(2^250 - 1) */
}

void nt_fe_invert(nt_fe *h, const nt_fe *f)
{
    nt_fe z250, z11;

    /* p - 2 = 2^255 - 21 = (2^250 - 1) * 2^5 + 11 */
    pow_2_250_1(&z250, &z11, f);
    fe_sq_n(&z250, &z250, 5);
    fe_mul(h, &z250, &z11);
}

void nt_fe_pow22523(nt_fe *h, const nt_fe *f)
{
    nt_fe z250, z11;

    /* (p - 5) / 8 = 2^252 - 3 = (2^250 - 1) * 2^2 + 1 */
    pow_2_250_1(&z250, &z11, f);
    fe_sq_n(&z250, &z250, 2);
    fe_mul(h, &z250, f);
}
