/* HKDF on HMAC-SHA-256 for the handshake key schedule, and AEAD states keyed
 * from traffic secrets. HMAC (RFC 2104) is built on one EVP digest fetched
 * once: the key schedule makes dozens of short HMACs per handshake, and
 * fetching a MAC implementation for each costs more than the hashing. The
 * schedule's stages (binder, handshake secrets, application secrets, Finished)
 * are one call each, with one digest context: through Python, a call costs
 * about as much again as the HMAC it makes. */
#include "nt_schedule.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <string.h>

#define BLOCK 64 /* SHA-256's block size */

static const char LABEL_PREFIX[] = "nautilus1 ";
#define LABEL_PREFIX_LEN (sizeof(LABEL_PREFIX) - 1)

static CRYPTO_ONCE sha256_once = CRYPTO_ONCE_STATIC_INIT;
static EVP_MD *sha256_md; /* kept for the life of the process */

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256(void)
{
    if (!CRYPTO_THREAD_run_once(&sha256_once, fetch_sha256) || sha256_md == NULL) {
        ERR_clear_error();
        return NULL;
    }
    return sha256_md;
}

/* A message in up to three parts: HMAC(key, a || b || c). */
typedef struct {
    const uint8_t *a, *b, *c;
    size_t a_len, b_len, c_len;
} parts;

static int digest_parts(EVP_MD_CTX *ctx, const EVP_MD *md, const uint8_t pad[BLOCK],
                        const parts *p, uint8_t out[NT_KDF_HASH_BYTES])
{
    unsigned int n = 0;

    if (EVP_DigestInit_ex2(ctx, md, NULL) <= 0 || EVP_DigestUpdate(ctx, pad, BLOCK) <= 0)
        return 0;
    if (p->a_len && EVP_DigestUpdate(ctx, p->a, p->a_len) <= 0)
        return 0;
    if (p->b_len && EVP_DigestUpdate(ctx, p->b, p->b_len) <= 0)
        return 0;
    if (p->c_len && EVP_DigestUpdate(ctx, p->c, p->c_len) <= 0)
        return 0;
    return EVP_DigestFinal_ex(ctx, out, &n) > 0 && n == NT_KDF_HASH_BYTES;
}

/* out = HMAC-SHA-256(key, message parts); key at most one block. */
static int hmac(EVP_MD_CTX *ctx, const uint8_t *key, size_t key_len, const parts *msg,
                uint8_t out[NT_KDF_HASH_BYTES])
{
    const EVP_MD *md = sha256();
    uint8_t ipad[BLOCK], opad[BLOCK], inner[NT_KDF_HASH_BYTES];
    parts outer = {inner, NULL, NULL, sizeof(inner), 0, 0};
    int ok;

    if (md == NULL || key_len > BLOCK)
        return 0;
    memset(ipad, 0x36, BLOCK);
    memset(opad, 0x5c, BLOCK);
    for (size_t i = 0; i < key_len; i++) {
        ipad[i] ^= key[i];
        opad[i] ^= key[i];
    }
    ok = digest_parts(ctx, md, ipad, msg, inner) && digest_parts(ctx, md, opad, &outer, out);
    OPENSSL_cleanse(ipad, sizeof(ipad));
    OPENSSL_cleanse(opad, sizeof(opad));
    OPENSSL_cleanse(inner, sizeof(inner));
    return ok;
}

static int fail(int code, uint8_t *out, size_t out_len)
{
    ERR_clear_error();
    if (out != NULL)
        OPENSSL_cleanse(out, out_len);
    return code;
}

static const uint8_t ZEROS[NT_KDF_HASH_BYTES] = {0};

/* HKDF-Extract with ``ctx``; an empty salt is 32 zero bytes. */
static int extract_with(EVP_MD_CTX *ctx, const uint8_t *salt, size_t salt_len, const uint8_t *ikm,
                        size_t ikm_len, uint8_t out[NT_KDF_HASH_BYTES])
{
    parts msg = {ikm, NULL, NULL, ikm_len, 0, 0};

    if (salt_len == 0) {
        salt = ZEROS;
        salt_len = sizeof(ZEROS);
    }
    return hmac(ctx, salt, salt_len, &msg, out);
}

/* HKDF-Expand-Label with ``ctx``; lengths checked by the caller. */
static int expand_label_with(EVP_MD_CTX *ctx, const uint8_t *secret, const uint8_t *label,
                             size_t label_len, const uint8_t *context, size_t context_len,
                             uint8_t *out, size_t out_len)
{
    /* HkdfLabel: length<2> | label<1> ("nautilus1 " + label) | context<1>. */
    uint8_t info[2 + 1 + LABEL_PREFIX_LEN + NT_KDF_MAX_LABEL + 1 + NT_KDF_MAX_CONTEXT];
    uint8_t block[NT_KDF_HASH_BYTES];
    uint8_t counter = 0;
    size_t info_len = 0, done = 0;
    int ok = 1;

    info[info_len++] = (uint8_t)(out_len >> 8);
    info[info_len++] = (uint8_t)out_len;
    info[info_len++] = (uint8_t)(LABEL_PREFIX_LEN + label_len);
    memcpy(info + info_len, LABEL_PREFIX, LABEL_PREFIX_LEN);
    info_len += LABEL_PREFIX_LEN;
    if (label_len)
        memcpy(info + info_len, label, label_len);
    info_len += label_len;
    info[info_len++] = (uint8_t)context_len;
    if (context_len)
        memcpy(info + info_len, context, context_len);
    info_len += context_len;

    /* T(i) = HMAC(secret, T(i-1) | info | i), T(0) empty (RFC 5869 section 2.3). */
    while (ok && done < out_len) {
        parts msg = {block, info, &counter, counter ? sizeof(block) : 0, info_len, 1};
        size_t take = out_len - done < sizeof(block) ? out_len - done : sizeof(block);
        counter++;
        ok = hmac(ctx, secret, NT_KDF_HASH_BYTES, &msg, block);
        if (ok) {
            memcpy(out + done, block, take);
            done += take;
        }
    }
    OPENSSL_cleanse(block, sizeof(block));
    return ok;
}

/* Frees the digest context of a call; its code, the output wiped on failure. */
static int stage_end(EVP_MD_CTX *ctx, int ok, uint8_t *out, size_t out_len)
{
    EVP_MD_CTX_free(ctx);
    return ok ? NT_OK : fail(NT_ERR_CRYPTO, out, out_len);
}

int nt_hkdf_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                    uint8_t *out, size_t out_len)
{
    EVP_MD_CTX *ctx;

    if (out == NULL || (salt == NULL && salt_len) || (ikm == NULL && ikm_len))
        return NT_ERR_ARG;
    if (out_len != NT_KDF_HASH_BYTES || salt_len > BLOCK)
        return NT_ERR_LENGTH;
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    return stage_end(ctx, extract_with(ctx, salt, salt_len, ikm, ikm_len, out), out, out_len);
}

int nt_hkdf_expand_label(const uint8_t *secret, size_t secret_len, const uint8_t *label,
                         size_t label_len, const uint8_t *context, size_t context_len,
                         uint8_t *out, size_t out_len)
{
    EVP_MD_CTX *ctx;
    int ok;

    if (secret == NULL || out == NULL || (label == NULL && label_len) ||
        (context == NULL && context_len))
        return NT_ERR_ARG;
    if (secret_len != NT_KDF_HASH_BYTES || label_len > NT_KDF_MAX_LABEL ||
        context_len > NT_KDF_MAX_CONTEXT || out_len == 0 || out_len > NT_KDF_MAX_OUTPUT)
        return NT_ERR_LENGTH;
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    ok = expand_label_with(ctx, secret, label, label_len, context, context_len, out, out_len);
    return stage_end(ctx, ok, out, out_len);
}

/* --- stages of the key schedule, one call each ------------------------------------ */

/* SHA-256 of the empty string: Derive-Secret(S, label, "") hashes no messages. */
static const uint8_t EMPTY_HASH[NT_KDF_HASH_BYTES] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
};

#define LABEL(s) (const uint8_t *)(s), (sizeof(s) - 1)

/* Derive-Secret(secret, label, hash): Expand-Label to 32 bytes. */
static int derive_with(EVP_MD_CTX *ctx, const uint8_t *secret, const uint8_t *label,
                       size_t label_len, const uint8_t *hash, uint8_t out[NT_KDF_HASH_BYTES])
{
    return expand_label_with(ctx, secret, label, label_len, hash, NT_KDF_HASH_BYTES, out,
                             NT_KDF_HASH_BYTES);
}

/* HMAC(Expand-Label(base, "finished", "", 32), hash) into out. */
static int finished_with(EVP_MD_CTX *ctx, const uint8_t *base, const uint8_t *hash,
                         uint8_t out[NT_KDF_HASH_BYTES])
{
    uint8_t key[NT_KDF_HASH_BYTES];
    int ok = expand_label_with(ctx, base, LABEL("finished"), NULL, 0, key, sizeof(key)) &&
             extract_with(ctx, key, sizeof(key), hash, NT_KDF_HASH_BYTES, out);

    OPENSSL_cleanse(key, sizeof(key));
    return ok;
}

/* The checks every stage makes: 32-byte inputs, an output of ``want`` bytes. */
static int stage_args(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len,
                      const uint8_t *out, size_t out_len, size_t want)
{
    if (a == NULL || b == NULL || out == NULL)
        return NT_ERR_ARG;
    if (a_len != NT_KDF_HASH_BYTES || b_len != NT_KDF_HASH_BYTES || out_len != want)
        return NT_ERR_LENGTH;
    return NT_OK;
}

/* A stage from a secret and a transcript hash to ``want`` bytes: checks, one
 * digest context for ``body``'s derivations, the output wiped on failure. */
typedef int (*stage_body)(EVP_MD_CTX *ctx, const uint8_t *secret, const uint8_t *hash,
                          uint8_t *out);

static int run_stage(stage_body body, const uint8_t *secret, size_t secret_len,
                     const uint8_t *hash, size_t hash_len, uint8_t *out, size_t out_len,
                     size_t want)
{
    EVP_MD_CTX *ctx;
    int rc = stage_args(secret, secret_len, hash, hash_len, out, out_len, want);

    if (rc != NT_OK)
        return rc;
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    return stage_end(ctx, body(ctx, secret, hash, out), out, out_len);
}

int nt_ks_finished(const uint8_t *base, size_t base_len, const uint8_t *hash, size_t hash_len,
                   uint8_t *out, size_t out_len)
{
    return run_stage(finished_with, base, base_len, hash, hash_len, out, out_len,
                     NT_KDF_HASH_BYTES);
}

static int binder_with(EVP_MD_CTX *ctx, const uint8_t *early, const uint8_t *hash, uint8_t *out)
{
    uint8_t key[NT_KDF_HASH_BYTES];
    int ok = derive_with(ctx, early, LABEL("res binder"), EMPTY_HASH, key) &&
             finished_with(ctx, key, hash, out);

    OPENSSL_cleanse(key, sizeof(key));
    return ok;
}

int nt_ks_binder(const uint8_t *early, size_t early_len, const uint8_t *hash, size_t hash_len,
                 uint8_t *out, size_t out_len)
{
    return run_stage(binder_with, early, early_len, hash, hash_len, out, out_len,
                     NT_KDF_HASH_BYTES);
}

static int handshake_with(EVP_MD_CTX *ctx, const uint8_t *early, const uint8_t *shared,
                          size_t shared_len, const uint8_t *hash, uint8_t *out)
{
    uint8_t salt[NT_KDF_HASH_BYTES];
    uint8_t *hs = out, *client = out + NT_KDF_HASH_BYTES, *server = out + 2 * NT_KDF_HASH_BYTES;
    uint8_t *master = out + 3 * NT_KDF_HASH_BYTES;
    int ok = derive_with(ctx, early, LABEL("derived"), EMPTY_HASH, salt) &&
             extract_with(ctx, salt, sizeof(salt), shared, shared_len, hs) &&
             derive_with(ctx, hs, LABEL("c hs traffic"), hash, client) &&
             derive_with(ctx, hs, LABEL("s hs traffic"), hash, server) &&
             derive_with(ctx, hs, LABEL("derived"), EMPTY_HASH, salt) &&
             extract_with(ctx, salt, sizeof(salt), ZEROS, sizeof(ZEROS), master);

    OPENSSL_cleanse(salt, sizeof(salt));
    return ok;
}

int nt_ks_handshake(const uint8_t *early, size_t early_len, const uint8_t *shared,
                    size_t shared_len, const uint8_t *hash, size_t hash_len, uint8_t *out,
                    size_t out_len)
{
    EVP_MD_CTX *ctx;
    int rc = stage_args(early, early_len, hash, hash_len, out, out_len, 4 * NT_KDF_HASH_BYTES);

    if (rc != NT_OK)
        return rc;
    if (shared == NULL || shared_len == 0)
        return NT_ERR_ARG;
    if (shared_len > NT_KDF_MAX_SHARED)
        return NT_ERR_LENGTH;
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    return stage_end(ctx, handshake_with(ctx, early, shared, shared_len, hash, out), out, out_len);
}

static int application_with(EVP_MD_CTX *ctx, const uint8_t *master, const uint8_t *hash,
                            uint8_t *out)
{
    return derive_with(ctx, master, LABEL("c ap traffic"), hash, out) &&
           derive_with(ctx, master, LABEL("s ap traffic"), hash, out + NT_KDF_HASH_BYTES) &&
           derive_with(ctx, master, LABEL("exp master"), hash, out + 2 * NT_KDF_HASH_BYTES);
}

int nt_ks_application(const uint8_t *master, size_t master_len, const uint8_t *hash,
                      size_t hash_len, uint8_t *out, size_t out_len)
{
    return run_stage(application_with, master, master_len, hash, hash_len, out, out_len,
                     3 * NT_KDF_HASH_BYTES);
}

/* key and iv of a traffic secret, into key[NT_RECORD_MAX_KEY_BYTES] and iv. */
static int traffic_keys(int cipher, const uint8_t *secret, size_t secret_len, uint8_t *key,
                        size_t *key_len, uint8_t iv[NT_RECORD_IV_BYTES])
{
    EVP_MD_CTX *ctx;
    int ok, rc = nt_aead_key_bytes(cipher, key_len);

    if (rc != NT_OK)
        return rc;
    if (secret == NULL)
        return NT_ERR_ARG;
    if (*key_len > NT_RECORD_MAX_KEY_BYTES || secret_len != NT_KDF_HASH_BYTES)
        return NT_ERR_LENGTH;
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    ok = expand_label_with(ctx, secret, LABEL("key"), NULL, 0, key, *key_len) &&
         expand_label_with(ctx, secret, LABEL("iv"), NULL, 0, iv, NT_RECORD_IV_BYTES);
    EVP_MD_CTX_free(ctx);
    return ok ? NT_OK : fail(NT_ERR_CRYPTO, NULL, 0);
}

int nt_aead_new_from_secret(int cipher, int encrypt, const uint8_t *secret, size_t secret_len,
                            nt_aead **out)
{
    uint8_t key[NT_RECORD_MAX_KEY_BYTES], iv[NT_RECORD_IV_BYTES];
    size_t key_len = 0;
    int rc;

    if (out == NULL)
        return NT_ERR_ARG;
    *out = NULL;
    rc = traffic_keys(cipher, secret, secret_len, key, &key_len, iv);
    if (rc == NT_OK)
        rc = nt_aead_new(cipher, encrypt, key, key_len, iv, sizeof(iv), out);
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    return rc;
}

int nt_aead_rekey_from_secret(nt_aead *st, const uint8_t *secret, size_t secret_len)
{
    uint8_t key[NT_RECORD_MAX_KEY_BYTES], iv[NT_RECORD_IV_BYTES];
    size_t key_len = 0;
    int rc;

    if (st == NULL)
        return NT_ERR_ARG;
    rc = traffic_keys(nt_aead_cipher(st), secret, secret_len, key, &key_len, iv);
    if (rc == NT_OK)
        rc = nt_aead_rekey(st, key, key_len, iv, sizeof(iv));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    return rc;
}
