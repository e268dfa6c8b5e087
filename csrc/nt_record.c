/* Batched record sealing and opening on OpenSSL EVP AEADs, or for AES-GCM on
 * CPUs with VAES but no AVX-512, on nt_gcm.c. The per-record path allocates
 * nothing: the EVP context is made once per direction and re-keyed. */
#include "nt_record.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <string.h>

#include "nt_gcm.h"

struct nt_aead {
    EVP_CIPHER_CTX *ctx;
    nt_gcm_key gcm; /* with own_gcm: the key, for nt_gcm.c instead of EVP */
    int own_gcm;
    int cipher;
    int encrypt;
    int failed;
    uint8_t iv[NT_RECORD_IV_BYTES];
    uint64_t seq;
    uint64_t limit;
    size_t max_fragment;
};

typedef struct {
    int id;
    const char *name;
    size_t key_len;
} nt_aead_desc;

static const nt_aead_desc AEADS[] = {
    {NT_AEAD_AES_256_GCM, "AES-256-GCM", 32},
    {NT_AEAD_AES_128_GCM, "AES-128-GCM", 16},
    {NT_AEAD_CHACHA20_POLY1305, "ChaCha20-Poly1305", 32},
};

#define N_AEADS (sizeof(AEADS) / sizeof(AEADS[0]))

static const nt_aead_desc *find(int cipher)
{
    for (size_t i = 0; i < N_AEADS; i++)
        if (AEADS[i].id == cipher)
            return &AEADS[i];
    return NULL;
}

/* The EVP ciphers, fetched once for the life of the process: a fetch costs
 * more than keying, and a handshake keys six directions. */
static CRYPTO_ONCE fetch_once = CRYPTO_ONCE_STATIC_INIT;
static EVP_CIPHER *fetched[N_AEADS];

static void fetch_all(void)
{
    for (size_t i = 0; i < N_AEADS; i++)
        fetched[i] = EVP_CIPHER_fetch(NULL, AEADS[i].name, NULL);
    ERR_clear_error(); /* a cipher this build lacks stays NULL */
}

static const EVP_CIPHER *cipher_of(const nt_aead_desc *d)
{
    if (!CRYPTO_THREAD_run_once(&fetch_once, fetch_all)) {
        ERR_clear_error();
        return NULL;
    }
    return fetched[d - AEADS];
}

int nt_aead_key_bytes(int cipher, size_t *key_len)
{
    const nt_aead_desc *d = find(cipher);
    if (d == NULL || key_len == NULL)
        return NT_ERR_ARG;
    *key_len = d->key_len;
    return NT_OK;
}

/* Whether new AES-GCM keys go to nt_gcm.c: -1 until first asked (then: if
 * the CPU can), 0 or 1 after nt_aead_own_gcm(). */
static int own_gcm_choice = -1;

int nt_aead_own_gcm(int choice)
{
    int now, unset = -1;

    if (choice == 0 || choice == 1) {
        now = choice && nt_gcm_supported();
        __atomic_store_n(&own_gcm_choice, now, __ATOMIC_RELAXED);
        return now;
    }
    now = __atomic_load_n(&own_gcm_choice, __ATOMIC_RELAXED);
    if (now >= 0)
        return now;
    /* First use: the default, unless a choice made meanwhile by another thread
     * got there first (a plain store could overwrite that choice). */
    now = nt_gcm_supported();
    if (!__atomic_compare_exchange_n(&own_gcm_choice, &unset, now, 0, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED))
        now = unset;
    return now;
}

static int set_key(nt_aead *st, const uint8_t *key, size_t key_len, const uint8_t *iv,
                   size_t iv_len)
{
    const nt_aead_desc *d = find(st->cipher);
    const EVP_CIPHER *c;

    if (key == NULL || iv == NULL)
        return NT_ERR_ARG;
    if (key_len != d->key_len || iv_len != NT_RECORD_IV_BYTES)
        return NT_ERR_LENGTH;
    OPENSSL_cleanse(&st->gcm, sizeof(st->gcm));
    st->own_gcm = st->cipher != NT_AEAD_CHACHA20_POLY1305 && nt_aead_own_gcm(-1);
    if (st->own_gcm) {
        /* An EVP key from before this rekey would stay in the context, unused
         * but not wiped, until nt_aead_free: reset wipes it. */
        if (EVP_CIPHER_CTX_reset(st->ctx) <= 0)
            ERR_clear_error();
        if (nt_gcm_set_key(&st->gcm, key, key_len) != NT_OK) {
            OPENSSL_cleanse(&st->gcm, sizeof(st->gcm));
            st->own_gcm = 0;
            st->failed = 1;
            return NT_ERR_CRYPTO;
        }
    } else {
        if ((c = cipher_of(d)) == NULL)
            return NT_ERR_CRYPTO;
        /* The IV is set per record; init here with the key only. */
        if (EVP_CipherInit_ex(st->ctx, c, NULL, key, NULL, st->encrypt) <= 0) {
            ERR_clear_error();
            st->failed = 1;
            return NT_ERR_CRYPTO;
        }
    }
    memcpy(st->iv, iv, NT_RECORD_IV_BYTES);
    st->seq = 0;
    st->failed = 0;
    return NT_OK;
}

int nt_aead_new(int cipher, int encrypt, const uint8_t *key, size_t key_len, const uint8_t *iv,
                size_t iv_len, nt_aead **out)
{
    nt_aead *st;
    int rc;

    if (out == NULL)
        return NT_ERR_ARG;
    *out = NULL;
    if (find(cipher) == NULL)
        return NT_ERR_ARG;
    if ((st = OPENSSL_zalloc(sizeof(*st))) == NULL)
        return NT_ERR_NOMEM;
    st->cipher = cipher;
    st->encrypt = encrypt ? 1 : 0;
    st->limit = NT_RECORD_DEFAULT_LIMIT;
    st->max_fragment = NT_RECORD_DEFAULT_FRAGMENT;
    if ((st->ctx = EVP_CIPHER_CTX_new()) == NULL) {
        OPENSSL_free(st);
        return NT_ERR_NOMEM;
    }
    rc = set_key(st, key, key_len, iv, iv_len);
    if (rc != NT_OK) {
        nt_aead_free(st);
        return rc;
    }
    *out = st;
    return NT_OK;
}

void nt_aead_free(nt_aead *st)
{
    if (st == NULL)
        return;
    EVP_CIPHER_CTX_free(st->ctx); /* cleanses the key schedule */
    OPENSSL_clear_free(st, sizeof(*st));
}

int nt_aead_rekey(nt_aead *st, const uint8_t *key, size_t key_len, const uint8_t *iv,
                  size_t iv_len)
{
    if (st == NULL)
        return NT_ERR_ARG;
    return set_key(st, key, key_len, iv, iv_len);
}

int nt_aead_set_limit(nt_aead *st, uint64_t records)
{
    if (st == NULL || records == 0)
        return NT_ERR_ARG;
    st->limit = records;
    return NT_OK;
}

int nt_aead_set_max_fragment(nt_aead *st, size_t max_fragment)
{
    if (st == NULL || max_fragment == 0 || max_fragment > NT_RECORD_MAX_FRAGMENT)
        return NT_ERR_ARG;
    st->max_fragment = max_fragment;
    return NT_OK;
}

int nt_aead_set_sequence(nt_aead *st, uint64_t sequence)
{
    if (st == NULL)
        return NT_ERR_ARG;
    st->seq = sequence;
    return NT_OK;
}

int nt_aead_cipher(const nt_aead *st)
{
    return st != NULL ? st->cipher : 0;
}

int nt_aead_uses_own_gcm(const nt_aead *st)
{
    return st != NULL && st->own_gcm;
}

uint64_t nt_aead_sequence(const nt_aead *st)
{
    return st != NULL ? st->seq : 0;
}

uint64_t nt_aead_remaining(const nt_aead *st)
{
    if (st == NULL || st->failed || st->seq >= st->limit)
        return 0;
    return st->limit - st->seq;
}

size_t nt_aead_max_fragment(const nt_aead *st)
{
    return st != NULL ? st->max_fragment : 0;
}

static void make_nonce(const nt_aead *st, uint64_t seq, uint8_t nonce[NT_RECORD_IV_BYTES])
{
    memcpy(nonce, st->iv, NT_RECORD_IV_BYTES);
    for (int i = 0; i < 8; i++)
        nonce[NT_RECORD_IV_BYTES - 1 - i] ^= (uint8_t)(seq >> (8 * i));
}

/* One AEAD pass: (in || trailer) -> out, with `aad`; the tag is written
 * (encrypt) or checked (decrypt). Lengths must fit in an int. */
static int aead_run(nt_aead *st, int enc, const uint8_t nonce[NT_RECORD_IV_BYTES],
                    const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                    const uint8_t *trailer, size_t trailer_len, uint8_t *out, uint8_t *tag)
{
    int n = 0;
    if (st->own_gcm) {
        nt_gcm_run run;
        nt_gcm_start(&st->gcm, &run, nonce, aad, aad_len);
        if (in_len > 0)
            nt_gcm_update(&st->gcm, &run, enc, in, out, in_len);
        if (trailer_len > 0)
            nt_gcm_update(&st->gcm, &run, enc, trailer, out + in_len, trailer_len);
        if (!enc)
            return nt_gcm_check(&st->gcm, &run, tag);
        nt_gcm_tag(&st->gcm, &run, tag);
        return NT_OK;
    }
    if (EVP_CipherInit_ex(st->ctx, NULL, NULL, NULL, nonce, enc) <= 0)
        goto fail;
    if (aad_len > 0 && EVP_CipherUpdate(st->ctx, NULL, &n, aad, (int)aad_len) <= 0)
        goto fail;
    if (in_len > 0) {
        if (EVP_CipherUpdate(st->ctx, out, &n, in, (int)in_len) <= 0 || (size_t)n != in_len)
            goto fail;
    }
    if (trailer_len > 0) {
        if (EVP_CipherUpdate(st->ctx, out + in_len, &n, trailer, (int)trailer_len) <= 0
            || (size_t)n != trailer_len)
            goto fail;
    }
    if (!enc
        && EVP_CIPHER_CTX_ctrl(st->ctx, EVP_CTRL_AEAD_SET_TAG, NT_RECORD_TAG_BYTES, tag) <= 0)
        goto fail;
    if (EVP_CipherFinal_ex(st->ctx, out + in_len + trailer_len, &n) <= 0 || n != 0)
        return enc ? NT_ERR_CRYPTO : (ERR_clear_error(), NT_ERR_AUTH);
    if (enc
        && EVP_CIPHER_CTX_ctrl(st->ctx, EVP_CTRL_AEAD_GET_TAG, NT_RECORD_TAG_BYTES, tag) <= 0)
        goto fail;
    return NT_OK;
fail:
    ERR_clear_error();
    return NT_ERR_CRYPTO;
}

static size_t records_for(const nt_aead *st, size_t len)
{
    return len == 0 ? 1 : (len - 1) / st->max_fragment + 1;
}

size_t nt_seal_size(const nt_aead *st, size_t plaintext_len)
{
    size_t n;
    if (st == NULL)
        return 0;
    n = records_for(st, plaintext_len);
    if (n > (SIZE_MAX - plaintext_len) / NT_RECORD_OVERHEAD)
        return 0;
    return plaintext_len + n * NT_RECORD_OVERHEAD;
}

int nt_seal(nt_aead *st, uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out,
            size_t out_cap, size_t *out_len, size_t *records)
{
    size_t n, need, pos = 0, off = 0;
    uint8_t nonce[NT_RECORD_IV_BYTES];
    int rc = NT_OK;

    if (st == NULL || out == NULL || out_len == NULL || records == NULL
        || (in == NULL && in_len > 0) || type == 0)
        return NT_ERR_ARG;
    *out_len = 0;
    *records = 0;
    if (st->failed || !st->encrypt)
        return NT_ERR_STATE;
    need = nt_seal_size(st, in_len);
    if (need == 0 || out_cap < need)
        return NT_ERR_BUFFER;
    n = records_for(st, in_len);
    if (st->seq >= st->limit || st->limit - st->seq < n)
        return NT_ERR_LIMIT; /* never reuse a nonce: the caller must rekey */
    for (size_t r = 0; r < n; r++) {
        size_t frag = in_len - off < st->max_fragment ? in_len - off : st->max_fragment;
        size_t body = frag + 1 + NT_RECORD_TAG_BYTES;
        uint8_t *hdr = out + pos;
        hdr[0] = NT_RECORD_SEALED_TYPE;
        hdr[1] = (uint8_t)(body >> 16);
        hdr[2] = (uint8_t)(body >> 8);
        hdr[3] = (uint8_t)body;
        make_nonce(st, st->seq, nonce);
        rc = aead_run(st, 1, nonce, hdr, NT_RECORD_HEADER_BYTES, frag ? in + off : NULL, frag,
                      &type, 1, hdr + NT_RECORD_HEADER_BYTES,
                      hdr + NT_RECORD_HEADER_BYTES + frag + 1);
        if (rc != NT_OK) {
            st->failed = 1;
            OPENSSL_cleanse(out, need);
            return rc;
        }
        st->seq++;
        off += frag;
        pos += NT_RECORD_HEADER_BYTES + body;
    }
    *out_len = pos;
    *records = n;
    return NT_OK;
}

int nt_seal_within(nt_aead *st, nt_budget *budget, uint8_t type, const uint8_t *in,
                   size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
                   size_t *records)
{
    int rc;

    if (budget == NULL)
        return nt_seal(st, type, in, in_len, out, out_cap, out_len, records);
    if (st == NULL || out_len == NULL || records == NULL)
        return NT_ERR_ARG;
    *out_len = 0;
    *records = 0;
    if ((uint64_t)records_for(st, in_len) >= budget->records || (uint64_t)in_len > budget->bytes)
        return NT_DUE;
    rc = nt_seal(st, type, in, in_len, out, out_cap, out_len, records);
    if (rc != NT_OK)
        return rc;
    budget->records -= *records;
    budget->bytes -= in_len;
    return NT_OK;
}

/* Decrypt one record body: content -> dst (clen bytes), inner type -> *inner. */
static int open_one(nt_aead *st, const uint8_t *hdr, const uint8_t *body, size_t clen,
                    uint8_t *dst, uint8_t *inner)
{
    uint8_t nonce[NT_RECORD_IV_BYTES];
    int n = 0;

    make_nonce(st, st->seq, nonce);
    if (st->own_gcm) {
        nt_gcm_run run;
        nt_gcm_start(&st->gcm, &run, nonce, hdr, NT_RECORD_HEADER_BYTES);
        if (clen > 0)
            nt_gcm_update(&st->gcm, &run, 0, body, dst, clen);
        nt_gcm_update(&st->gcm, &run, 0, body + clen, inner, 1);
        if (nt_gcm_check(&st->gcm, &run, body + clen + 1) != NT_OK)
            return NT_ERR_AUTH;
        return *inner == 0 ? NT_ERR_FORMAT : NT_OK;
    }
    if (EVP_CipherInit_ex(st->ctx, NULL, NULL, NULL, nonce, 0) <= 0
        || EVP_CipherUpdate(st->ctx, NULL, &n, hdr, NT_RECORD_HEADER_BYTES) <= 0)
        goto fail;
    if (clen > 0
        && (EVP_CipherUpdate(st->ctx, dst, &n, body, (int)clen) <= 0 || (size_t)n != clen))
        goto fail;
    if (EVP_CipherUpdate(st->ctx, inner, &n, body + clen, 1) <= 0 || n != 1)
        goto fail;
    if (EVP_CIPHER_CTX_ctrl(st->ctx, EVP_CTRL_AEAD_SET_TAG, NT_RECORD_TAG_BYTES,
                            (void *)(body + clen + 1))
        <= 0)
        goto fail;
    if (EVP_CipherFinal_ex(st->ctx, dst + clen, &n) <= 0 || n != 0) {
        ERR_clear_error();
        return NT_ERR_AUTH;
    }
    return *inner == 0 ? NT_ERR_FORMAT : NT_OK;
fail:
    ERR_clear_error();
    return NT_ERR_CRYPTO;
}

/* The one opening loop behind nt_open and nt_open_packed. With spans == NULL
 * only the summary is kept (no per-record output, no record count bound). */
static int open_loop(nt_aead *st, uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
                     uint8_t batch_type, nt_span *spans, size_t max_spans, nt_open_summary *sum)
{
    size_t pos = 0, outpos = 0, n = 0;
    int rc = NT_OK;

    memset(sum, 0, sizeof(*sum));
    if (st->failed || st->encrypt)
        return NT_ERR_STATE;
    while (n < max_spans && in_len - pos >= NT_RECORD_HEADER_BYTES) {
        uint8_t *hdr = in + pos;
        size_t body = ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
        size_t clen; /* content length, without the inner type byte */
        uint8_t *dst, inner = 0;

        if (hdr[0] != NT_RECORD_SEALED_TYPE || body < 1 + NT_RECORD_TAG_BYTES
            || body > st->max_fragment + 1 + NT_RECORD_TAG_BYTES) {
            rc = NT_ERR_FORMAT;
            break;
        }
        if (in_len - pos - NT_RECORD_HEADER_BYTES < body)
            break; /* incomplete: wait for more bytes */
        clen = body - 1 - NT_RECORD_TAG_BYTES;
        if (out != NULL && out_cap - outpos < clen) {
            if (n == 0)
                rc = NT_ERR_BUFFER;
            break;
        }
        if (st->seq >= st->limit) {
            /* The peer did not rekey in time. Report what verified first; the
             * next call fails (the caller may rekey, which clears this). */
            if (n == 0)
                rc = NT_ERR_LIMIT;
            break;
        }
        dst = out != NULL ? out + outpos : hdr + NT_RECORD_HEADER_BYTES;
        rc = open_one(st, hdr, hdr + NT_RECORD_HEADER_BYTES, clen, dst, &inner);
        if (rc != NT_OK) {
            /* Release no byte of a bad record: its content, and in place also
             * the (still encrypted) inner type position. */
            OPENSSL_cleanse(dst, clen);
            if (out == NULL)
                dst[clen] = 0;
            OPENSSL_cleanse(&inner, 1);
            break;
        }
        st->seq++;
        if (spans != NULL) {
            spans[n].offset = out != NULL ? outpos : pos + NT_RECORD_HEADER_BYTES;
            spans[n].length = clen;
            spans[n].type = inner;
        }
        n++;
        sum->last_type = inner;
        sum->last_length = clen;
        outpos += clen;
        pos += NT_RECORD_HEADER_BYTES + body;
        if (inner != batch_type)
            break;
    }
    sum->records = n;
    sum->consumed = pos;
    sum->written = out != NULL ? outpos : 0;
    if (rc != NT_OK && rc != NT_ERR_BUFFER && rc != NT_ERR_LIMIT)
        st->failed = 1;
    return rc;
}

int nt_open(nt_aead *st, uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
            uint8_t batch_type, nt_span *spans, size_t max_spans, size_t *n_spans,
            size_t *consumed)
{
    nt_open_summary sum;
    int rc;

    if (st == NULL || (in == NULL && in_len > 0) || spans == NULL || n_spans == NULL
        || consumed == NULL || max_spans == 0)
        return NT_ERR_ARG;
    rc = open_loop(st, in, in_len, out, out_cap, batch_type, spans, max_spans, &sum);
    *n_spans = sum.records;
    *consumed = sum.consumed;
    return rc;
}

int nt_open_packed(nt_aead *st, const uint8_t *in, size_t in_len, uint8_t *out,
                   size_t out_cap, uint8_t batch_type, size_t max_records,
                   nt_open_summary *summary)
{
    if (st == NULL || (in == NULL && in_len > 0) || out == NULL || summary == NULL)
        return NT_ERR_ARG;
    /* With an output buffer, open_loop only reads its input. */
    return open_loop(st, (uint8_t *)in, in_len, out, out_cap, batch_type, NULL,
                     max_records == 0 ? SIZE_MAX : max_records, summary);
}

static int oneshot_check(const nt_aead *st, const uint8_t *nonce, size_t nonce_len,
                         const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                         const uint8_t *out)
{
    if (st == NULL || nonce == NULL || out == NULL || (aad == NULL && aad_len > 0)
        || (in == NULL && in_len > 0))
        return NT_ERR_ARG;
    if (nonce_len != NT_RECORD_IV_BYTES)
        return NT_ERR_LENGTH;
    if (aad_len > INT_MAX || in_len > INT_MAX - NT_RECORD_TAG_BYTES)
        return NT_ERR_LENGTH;
    if (st->failed)
        return NT_ERR_STATE;
    return NT_OK;
}

int nt_aead_encrypt(nt_aead *st, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                    size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap)
{
    int rc = oneshot_check(st, nonce, nonce_len, aad, aad_len, in, in_len, out);
    if (rc != NT_OK)
        return rc;
    if (out_cap < in_len + NT_RECORD_TAG_BYTES)
        return NT_ERR_BUFFER;
    return aead_run(st, 1, nonce, aad, aad_len, in, in_len, NULL, 0, out, out + in_len);
}

int nt_aead_decrypt(nt_aead *st, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                    size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap)
{
    int rc = oneshot_check(st, nonce, nonce_len, aad, aad_len, in, in_len, out);
    size_t ctlen;
    if (rc != NT_OK)
        return rc;
    if (in_len < NT_RECORD_TAG_BYTES)
        return NT_ERR_LENGTH;
    ctlen = in_len - NT_RECORD_TAG_BYTES;
    if (out_cap < ctlen)
        return NT_ERR_BUFFER;
    rc = aead_run(st, 0, nonce, aad, aad_len, in, ctlen, NULL, 0, out, (uint8_t *)in + ctlen);
    if (rc != NT_OK)
        OPENSSL_cleanse(out, ctlen);
    return rc;
}
