/* Ed25519 signature verification on edwards25519 (see nt_ed25519.h for the
 * exact semantics, which are OpenSSL 3.x's).
 *
 * VARIABLE TIME, on purpose: verification handles only public data (public
 * key, signature, message), so branches and table indices may depend on it.
 * Never reuse this code for signing or for anything secret.
 *
 * Curve: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p), p = 2^255 - 19,
 * d = -121665/121666 (RFC 8032 section 5.1). Points are in extended twisted
 * Edwards coordinates (X : Y : Z : T), x = X/Z, y = Y/Z, xy = T/Z, with the
 * doubling (dbl-2008-hwcd) and addition (add-2008-hwcd-3, a = -1, k = 2d)
 * formulas of Hisil, Wong, Carter and Dawson, "Twisted Edwards curves
 * revisited" (2008), sections 3.1 and 3.3. With a = -1 a square and d a
 * non-square mod p, both are complete: they hold for every pair of curve
 * points, identity and small-order points included.
 *
 * [S]B - [h]A is a joint double-and-add over signed sliding windows (wNAF):
 * width 5 for A (8 odd multiples computed per verification), width 8 for the
 * fixed base point B (64 odd multiples in affine form, computed once). */
#include "nt_ed25519.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <string.h>

#include "nt_fe25519.h"
#include "nt_sc25519.h"

#define A_WINDOW 5
#define A_TABLE (1 << (A_WINDOW - 2)) /* A, 3A, ..., 15A */
#define B_WINDOW 8
#define B_TABLE (1 << (B_WINDOW - 2)) /* B, 3B, ..., 127B */

/* d, 2d and sqrt(-1) = 2^((p-1)/4) mod p in radix 2^51, computed with Python's
 * integers from their definitions (RFC 8032 section 5.1):
 * d = -121665 * pow(121666, p - 2, p) % p, sqrt(-1) = pow(2, (p - 1) // 4, p). */
static const nt_fe FE_D = {{UINT64_C(0x34dca135978a3), UINT64_C(0x1a8283b156ebd),
                            UINT64_C(0x5e7a26001c029), UINT64_C(0x739c663a03cbb),
                            UINT64_C(0x52036cee2b6ff)}};
static const nt_fe FE_D2 = {{UINT64_C(0x69b9426b2f159), UINT64_C(0x35050762add7a),
                             UINT64_C(0x3cf44c0038052), UINT64_C(0x6738cc7407977),
                             UINT64_C(0x2406d9dc56dff)}};
static const nt_fe FE_SQRT_M1 = {{UINT64_C(0x61b274a0ea0b0), UINT64_C(0xd5a5fc8f189d),
                                  UINT64_C(0x7ef5e9cbd0c60), UINT64_C(0x78595a6804c9e),
                                  UINT64_C(0x2b8324804fc1d)}};

/* The base point B (RFC 8032 section 5.1): y = 4/5, x even; its encoding. */
static const uint8_t B_ENCODING[32] = {
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66};

typedef struct {
    nt_fe X, Y, Z;
} ge_p2; /* projective: x = X/Z, y = Y/Z */

typedef struct {
    nt_fe X, Y, Z, T;
} ge_p3; /* extended: also T = XY/Z */

typedef struct {
    nt_fe e, f, g, h;
} ge_done; /* an operation's result before its last products: X = ef, Y = gh, Z = fg, T = eh */

typedef struct {
    nt_fe ypx, ymx, z2, t2d;
} ge_cached; /* Y + X, Y - X, 2Z, 2dT: a point ready to be added */

typedef struct {
    nt_fe ypx, ymx, xy2d;
} ge_affine; /* y + x, y - x, 2dxy: the same with Z = 1 */

static CRYPTO_ONCE init_once = CRYPTO_ONCE_STATIC_INIT;
static int init_ok;
static EVP_MD *sha512_md;            /* kept for the life of the process */
static ge_affine base_table[B_TABLE]; /* (2i + 1)B, written once under init_once */

static void done_to_p2(ge_p2 *r, const ge_done *p)
{
    fe_mul(&r->X, &p->e, &p->f);
    fe_mul(&r->Y, &p->g, &p->h);
    fe_mul(&r->Z, &p->f, &p->g);
}

static void done_to_p3(ge_p3 *r, const ge_done *p)
{
    fe_mul(&r->X, &p->e, &p->f);
    fe_mul(&r->Y, &p->g, &p->h);
    fe_mul(&r->Z, &p->f, &p->g);
    fe_mul(&r->T, &p->e, &p->h);
}

/* Point coordinates (ge_p2, ge_p3) are always tight; the uncarried values of
 * the functions below have their bounds noted, all < 2^54 (fe_mul's limit). */

static void p3_to_cached(ge_cached *r, const ge_p3 *p)
{
    fe_add(&r->ypx, &p->Y, &p->X);       /* < 2^52 + 2^14 */
    fe_sub_loose(&r->ymx, &p->Y, &p->X); /* < 2^53.6 */
    fe_add(&r->z2, &p->Z, &p->Z); /* < 2^52 + 2^14 */
    fe_mul(&r->t2d, &p->T, &FE_D2);
}

/* r = 2p (dbl-2008-hwcd with a = -1): A = X^2, B = Y^2, C = 2Z^2,
 * E = (X + Y)^2 - A - B, G = B - A, F = G - C, H = -A - B. */
static void ge_dbl(ge_done *r, const ge_p2 *p)
{
    nt_fe a, b, c, ab, ac, s, zero;

    fe_sq(&a, &p->X);
    fe_sq(&b, &p->Y);
    fe_sq(&c, &p->Z);
    fe_add(&c, &c, &c); /* < 2^52 + 2^14 */
    fe_add(&s, &p->X, &p->Y);
    fe_sq(&s, &s);
    fe_add(&ab, &a, &b);              /* < 2^52 + 2^14 */
    fe_add(&ac, &a, &c);              /* < 2^52.6 */
    fe_sub_loose(&r->e, &s, &ab);     /* < 2^53.6 */
    fe_sub_loose(&r->g, &b, &a);      /* < 2^53.6 */
    fe_sub_loose(&r->f, &b, &ac);     /* G - C = B - (A + C), < 2^53.6 */
    fe_zero(&zero);
    fe_sub_loose(&r->h, &zero, &ab); /* < 2^53 */
}

static void ge_dbl_p3(ge_done *r, const ge_p3 *p)
{
    ge_p2 q = {p->X, p->Y, p->Z};

    ge_dbl(r, &q);
}

/* The common tail of the additions: from A = (Y1 - X1)(Y2 - X2),
 * B = (Y1 + X1)(Y2 + X2), C = 2d T1 T2, D = 2 Z1 Z2, E = B - A, F = D - C,
 * G = D + C, H = B + A. Subtracting q instead (-q = (-X, Y, Z, -T)) swaps
 * Y2 + X2 with Y2 - X2 and negates C. */
static void add_tail(ge_done *r, const nt_fe *a, const nt_fe *b, const nt_fe *c,
                     const nt_fe *d, int negate)
{
    /* a, b, c tight; d tight or (for affine q) < 2^52 + 2^14: all results < 2^53.6 */
    fe_sub_loose(&r->e, b, a);
    fe_add(&r->h, b, a);
    if (negate) {
        fe_add(&r->f, d, c);
        fe_sub_loose(&r->g, d, c);
    } else {
        fe_sub_loose(&r->f, d, c);
        fe_add(&r->g, d, c);
    }
}

/* r = p + q, or p - q if negate (add-2008-hwcd-3). */
static void ge_add_cached(ge_done *r, const ge_p3 *p, const ge_cached *q, int negate)
{
    nt_fe a, b, c, d, t;

    fe_sub_loose(&t, &p->Y, &p->X);
    fe_mul(&a, &t, negate ? &q->ypx : &q->ymx);
    fe_add(&t, &p->Y, &p->X);
    fe_mul(&b, &t, negate ? &q->ymx : &q->ypx);
    fe_mul(&c, &p->T, &q->t2d);
    fe_mul(&d, &p->Z, &q->z2);
    add_tail(r, &a, &b, &c, &d, negate);
}

/* r = p + q, or p - q if negate, for q with Z = 1 (one multiply fewer). */
static void ge_add_affine(ge_done *r, const ge_p3 *p, const ge_affine *q, int negate)
{
    nt_fe a, b, c, d, t;

    fe_sub_loose(&t, &p->Y, &p->X);
    fe_mul(&a, &t, negate ? &q->ypx : &q->ymx);
    fe_add(&t, &p->Y, &p->X);
    fe_mul(&b, &t, negate ? &q->ymx : &q->ypx);
    fe_mul(&c, &p->T, &q->xy2d);
    fe_add(&d, &p->Z, &p->Z); /* < 2^52 + 2^14 */
    add_tail(r, &a, &b, &c, &d, negate);
}

/* Decode a point as OpenSSL does: RFC 8032 section 5.1.3, except that a
 * y >= p is used mod p (not rejected) and x = 0 with the sign bit set is
 * accepted (as x = 0). Returns 0 if there is no x for y on the curve. */
static int ge_frombytes(ge_p3 *r, const uint8_t s[32])
{
    nt_fe y2, u, v, v3, t, x, vxx, check;

    nt_fe_frombytes(&r->Y, s);
    fe_one(&r->Z);
    fe_sq(&y2, &r->Y);
    fe_sub(&u, &y2, &r->Z); /* u = y^2 - 1 */
    fe_mul(&v, &y2, &FE_D);
    fe_add(&v, &v, &r->Z); /* v = d y^2 + 1, never 0 (-1/d is not a square) */
    /* candidate x = u v^3 (u v^7)^((p-5)/8) */
    fe_sq(&v3, &v);
    fe_mul(&v3, &v3, &v);  /* v^3 */
    fe_sq(&t, &v3);
    fe_mul(&t, &t, &v);    /* v^7 */
    fe_mul(&t, &t, &u);    /* u v^7 */
    nt_fe_pow22523(&t, &t);
    fe_mul(&t, &t, &v3);
    fe_mul(&x, &t, &u);
    fe_sq(&vxx, &x);
    fe_mul(&vxx, &vxx, &v);
    fe_sub(&check, &vxx, &u);
    if (!nt_fe_iszero(&check)) { /* v x^2 != u */
        fe_add(&check, &vxx, &u);
        if (!nt_fe_iszero(&check)) /* nor -u: u/v is not a square */
            return 0;
        fe_mul(&x, &x, &FE_SQRT_M1);
    }
    if (nt_fe_isodd(&x) != (s[31] >> 7))
        fe_neg(&x, &x); /* for x = 0 this leaves 0: the sign bit is ignored */
    r->X = x;
    fe_mul(&r->T, &r->X, &r->Y);
    return 1;
}

/* Canonical encoding of p: y with the parity of x in bit 255. */
static void ge_tobytes(uint8_t s[32], const ge_p2 *p)
{
    nt_fe zi, x, y;

    nt_fe_invert(&zi, &p->Z);
    fe_mul(&x, &p->X, &zi);
    fe_mul(&y, &p->Y, &zi);
    nt_fe_tobytes(s, &y);
    s[31] |= (uint8_t)(nt_fe_isodd(&x) << 7);
}

static void init(void)
{
    ge_p3 b, b2, cur;
    ge_cached b_cached;
    ge_done t;

    sha512_md = EVP_MD_fetch(NULL, "SHA512", NULL);
    if (sha512_md == NULL || !ge_frombytes(&b, B_ENCODING))
        return;
    ge_dbl_p3(&t, &b);
    done_to_p3(&b2, &t);
    p3_to_cached(&b_cached, &b2);
    cur = b;
    for (int i = 0; i < B_TABLE; i++) {
        nt_fe zi, x, y;
        if (i > 0) { /* cur = (2i + 1)B = (2i - 1)B + 2B */
            ge_add_cached(&t, &cur, &b_cached, 0);
            done_to_p3(&cur, &t);
        }
        nt_fe_invert(&zi, &cur.Z);
        fe_mul(&x, &cur.X, &zi);
        fe_mul(&y, &cur.Y, &zi);
        fe_add(&base_table[i].ypx, &y, &x);
        fe_sub(&base_table[i].ymx, &y, &x);
        fe_mul(&base_table[i].xy2d, &x, &y);
        fe_mul(&base_table[i].xy2d, &base_table[i].xy2d, &FE_D2);
    }
    init_ok = 1;
}

/* r = [s]B + [h]P, from the wNAFs of s and h; P's odd multiples in table. */
static void double_scalarmult(ge_p2 *r, const int8_t naf_s[256], int top_s,
                              const int8_t naf_h[256], int top_h,
                              const ge_cached table[A_TABLE])
{
    ge_done t;
    ge_p3 u;

    fe_zero(&r->X);
    fe_one(&r->Y);
    fe_one(&r->Z);
    for (int i = (top_s > top_h ? top_s : top_h) - 1; i >= 0; i--) {
        ge_dbl(&t, r);
        if (naf_h[i] != 0) {
            done_to_p3(&u, &t);
            ge_add_cached(&t, &u, &table[(naf_h[i] < 0 ? -naf_h[i] : naf_h[i]) / 2], naf_h[i] < 0);
        }
        if (naf_s[i] != 0) {
            done_to_p3(&u, &t);
            ge_add_affine(&t, &u, &base_table[(naf_s[i] < 0 ? -naf_s[i] : naf_s[i]) / 2],
                          naf_s[i] < 0);
        }
        done_to_p2(r, &t);
    }
}

/* h = SHA-512(R || A || M) mod L. Returns an NT_ code. */
static int challenge(uint8_t h[32], const uint8_t *r, const uint8_t *pub, const uint8_t *msg,
                     size_t msg_len)
{
    uint8_t digest[64];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;

    if (ctx == NULL) {
        ERR_clear_error();
        return NT_ERR_NOMEM;
    }
    ok = EVP_DigestInit_ex2(ctx, sha512_md, NULL) > 0 && EVP_DigestUpdate(ctx, r, 32) > 0 &&
         EVP_DigestUpdate(ctx, pub, NT_ED25519_PUBLIC_BYTES) > 0 &&
         (msg_len == 0 || EVP_DigestUpdate(ctx, msg, msg_len) > 0) &&
         EVP_DigestFinal_ex(ctx, digest, &n) > 0 && n == sizeof(digest);
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        ERR_clear_error();
        return NT_ERR_CRYPTO;
    }
    nt_sc_reduce(h, digest);
    return NT_OK;
}

int nt_ed25519_verify(const uint8_t *pub, size_t pub_len, const uint8_t *sig, size_t sig_len,
                      const uint8_t *msg, size_t msg_len)
{
    const uint8_t *r = sig, *s = sig + 32;
    uint8_t h[32], rcheck[32];
    int8_t naf_s[256], naf_h[256];
    int top_s, top_h, rc;
    ge_p3 a, a2;
    ge_cached table[A_TABLE];
    ge_done t;
    ge_p2 result;

    if (pub == NULL || sig == NULL || (msg == NULL && msg_len))
        return NT_ERR_ARG;
    if (pub_len != NT_ED25519_PUBLIC_BYTES || sig_len != NT_ED25519_SIGNATURE_BYTES)
        return NT_ERR_LENGTH;
    if (!CRYPTO_THREAD_run_once(&init_once, init) || !init_ok) {
        ERR_clear_error();
        return NT_ERR_CRYPTO;
    }
    if (!nt_sc_is_canonical(s) || !ge_frombytes(&a, pub))
        return NT_ERR_AUTH;
    if ((rc = challenge(h, r, pub, msg, msg_len)) != NT_OK)
        return rc;

    /* Odd multiples of -A, so that the loop computes [S]B + [h](-A). */
    fe_neg(&a.X, &a.X);
    fe_neg(&a.T, &a.T);
    p3_to_cached(&table[0], &a);
    ge_dbl_p3(&t, &a);
    done_to_p3(&a2, &t);
    for (int i = 1; i < A_TABLE; i++) {
        ge_p3 cur;
        ge_add_cached(&t, &a2, &table[i - 1], 0);
        done_to_p3(&cur, &t);
        p3_to_cached(&table[i], &cur);
    }
    top_s = nt_sc_wnaf(naf_s, s, B_WINDOW);
    top_h = nt_sc_wnaf(naf_h, h, A_WINDOW);
    double_scalarmult(&result, naf_s, top_s, naf_h, top_h, table);
    ge_tobytes(rcheck, &result);
    return memcmp(rcheck, r, sizeof(rcheck)) == 0 ? NT_OK : NT_ERR_AUTH;
}
