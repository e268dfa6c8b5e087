/* HKDF on HMAC-SHA-256 for the handshake key schedule, and AEAD states keyed
 * from traffic secrets. HMAC (RFC 2104) is built on one EVP digest fetched
 * once: the key schedule makes dozens of short HMACs per handshake, and
 * fetching a MAC implementation for each costs more than the hashing. */
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

int nt_hkdf_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                    uint8_t *out, size_t out_len)
{
    static const uint8_t zeros[NT_KDF_HASH_BYTES] = {0};
    parts msg = {ikm, NULL, NULL, ikm_len, 0, 0};
    EVP_MD_CTX *ctx;
    int ok;

    if (out == NULL || (salt == NULL && salt_len) || (ikm == NULL && ikm_len))
        return NT_ERR_ARG;
    if (out_len != NT_KDF_HASH_BYTES || salt_len > BLOCK)
        return NT_ERR_LENGTH;
    if (salt_len == 0) {
        salt = zeros;
        salt_len = sizeof(zeros);
    }
    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    ok = hmac(ctx, salt, salt_len, &msg, out);
    EVP_MD_CTX_free(ctx);
    return ok ? NT_OK : fail(NT_ERR_CRYPTO, out, out_len);
}

int nt_hkdf_expand_label(const uint8_t *secret, size_t secret_len, const uint8_t *label,
                         size_t label_len, const uint8_t *context, size_t context_len,
                         uint8_t *out, size_t out_len)
{
    /* HkdfLabel: length<2> | label<1> ("nautilus1 " + label) | context<1>. */
    uint8_t info[2 + 1 + LABEL_PREFIX_LEN + NT_KDF_MAX_LABEL + 1 + NT_KDF_MAX_CONTEXT];
    uint8_t block[NT_KDF_HASH_BYTES];
    uint8_t counter = 0;
    size_t info_len = 0, done = 0;
    EVP_MD_CTX *ctx;
    int ok = 1;

    if (secret == NULL || out == NULL || (label == NULL && label_len) ||
        (context == NULL && context_len))
        return NT_ERR_ARG;
    if (secret_len != NT_KDF_HASH_BYTES || label_len > NT_KDF_MAX_LABEL ||
        context_len > NT_KDF_MAX_CONTEXT || out_len == 0 || out_len > NT_KDF_MAX_OUTPUT)
        return NT_ERR_LENGTH;
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

    if ((ctx = EVP_MD_CTX_new()) == NULL)
        return NT_ERR_NOMEM;
    /* T(i) = HMAC(secret, T(i-1) | info | i), T(0) empty (RFC 5869 section 2.3). */
    while (ok && done < out_len) {
        parts msg = {block, info, &counter, counter ? sizeof(block) : 0, info_len, 1};
        size_t take = out_len - done < sizeof(block) ? out_len - done : sizeof(block);
        counter++;
        ok = hmac(ctx, secret, secret_len, &msg, block);
        if (ok) {
            memcpy(out + done, block, take);
            done += take;
        }
    }
    EVP_MD_CTX_free(ctx);
    OPENSSL_cleanse(block, sizeof(block));
    return ok ? NT_OK : fail(NT_ERR_CRYPTO, out, out_len);
}

/* key and iv of a traffic secret, into key[NT_RECORD_MAX_KEY_BYTES] and iv. */
static int traffic_keys(int cipher, const uint8_t *secret, size_t secret_len, uint8_t *key,
                        size_t *key_len, uint8_t iv[NT_RECORD_IV_BYTES])
{
    static const uint8_t key_label[] = "key", iv_label[] = "iv";
    int rc = nt_aead_key_bytes(cipher, key_len);

    if (rc != NT_OK)
        return rc;
    if (*key_len > NT_RECORD_MAX_KEY_BYTES)
        return NT_ERR_LENGTH;
    rc = nt_hkdf_expand_label(secret, secret_len, key_label, sizeof(key_label) - 1, NULL, 0, key,
                              *key_len);
    if (rc == NT_OK)
        rc = nt_hkdf_expand_label(secret, secret_len, iv_label, sizeof(iv_label) - 1, NULL, 0,
                                  iv, NT_RECORD_IV_BYTES);
    return rc;
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
