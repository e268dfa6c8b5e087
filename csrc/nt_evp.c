/* Checked wrappers over OpenSSL EVP for ML-KEM and X25519 keys. */
#include "nt_evp.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>

#include "nt_ct.h"

static int fail(int code)
{
    ERR_clear_error();
    return code;
}

int nt_evp_generate(const char *name, const uint8_t *seed, size_t seed_len, EVP_PKEY **out)
{
    int rc = NT_ERR_CRYPTO;
    EVP_PKEY_CTX *ctx = NULL;

    *out = NULL;
    if (seed != NULL && OPENSSL_strcasecmp(name, "X25519") == 0) {
        /* X25519's "seed" is its private scalar. */
        *out = EVP_PKEY_new_raw_private_key_ex(NULL, name, NULL, seed, seed_len);
        return *out != NULL ? NT_OK : fail(NT_ERR_CRYPTO);
    }
    ctx = EVP_PKEY_CTX_new_from_name(NULL, name, NULL);
    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) <= 0)
        goto done;
    if (seed != NULL) {
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_ML_KEM_SEED,
                                                      (void *)seed, seed_len);
        params[1] = OSSL_PARAM_construct_end();
        if (EVP_PKEY_CTX_set_params(ctx, params) <= 0)
            goto done;
    }
    if (EVP_PKEY_generate(ctx, out) <= 0) {
        *out = NULL;
        goto done;
    }
    rc = NT_OK;
done:
    EVP_PKEY_CTX_free(ctx);
    return rc == NT_OK ? rc : fail(rc);
}

int nt_evp_from_public(const char *name, const uint8_t *pub, size_t len, EVP_PKEY **out)
{
    /* OpenSSL's ML-KEM import performs the FIPS 203 section 7.2 modulus check. */
    *out = EVP_PKEY_new_raw_public_key_ex(NULL, name, NULL, pub, len);
    return *out != NULL ? NT_OK : fail(NT_ERR_INVALID_KEY);
}

int nt_evp_from_private(const char *name, const uint8_t *priv, size_t len, EVP_PKEY **out)
{
    /* For ML-KEM: the section 7.3 checks (the embedded H(ek) must match ek). */
    *out = EVP_PKEY_new_raw_private_key_ex(NULL, name, NULL, priv, len);
    return *out != NULL ? NT_OK : fail(NT_ERR_INVALID_KEY);
}

int nt_evp_raw_public(const EVP_PKEY *pkey, uint8_t *out, size_t len)
{
    size_t got = len;
    if (EVP_PKEY_get_raw_public_key(pkey, out, &got) <= 0 || got != len)
        return fail(NT_ERR_CRYPTO);
    return NT_OK;
}

int nt_evp_raw_private(const EVP_PKEY *pkey, uint8_t *out, size_t len)
{
    size_t got = len;
    if (EVP_PKEY_get_raw_private_key(pkey, out, &got) <= 0 || got != len) {
        OPENSSL_cleanse(out, len);
        return fail(NT_ERR_STATE);
    }
    return NT_OK;
}

int nt_evp_mlkem_seed(const EVP_PKEY *pkey, uint8_t *out, size_t len)
{
    size_t got = 0;
    if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ML_KEM_SEED, out, len, &got) <= 0
        || got != len) {
        OPENSSL_cleanse(out, len);
        return fail(NT_ERR_STATE); /* a key imported from its expanded form has no seed */
    }
    return NT_OK;
}

int nt_evp_mlkem_encap(EVP_PKEY *pub, const uint8_t *m, uint8_t *ct, size_t ct_len,
                       uint8_t *ss, size_t ss_len)
{
    int rc = NT_ERR_CRYPTO;
    size_t got_ct = ct_len, got_ss = ss_len;
    OSSL_PARAM params[2];
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);

    params[0] = OSSL_PARAM_construct_end();
    if (m != NULL) {
        params[0] = OSSL_PARAM_construct_octet_string(OSSL_KEM_PARAM_IKME, (void *)m, 32);
        params[1] = OSSL_PARAM_construct_end();
    }
    if (ctx == NULL || EVP_PKEY_encapsulate_init(ctx, params) <= 0)
        goto done;
    if (EVP_PKEY_encapsulate(ctx, ct, &got_ct, ss, &got_ss) <= 0)
        goto done;
    if (got_ct != ct_len || got_ss != ss_len)
        goto done;
    rc = NT_OK;
done:
    EVP_PKEY_CTX_free(ctx);
    if (rc != NT_OK) {
        OPENSSL_cleanse(ss, ss_len);
        return fail(rc);
    }
    return rc;
}

int nt_evp_mlkem_decap(EVP_PKEY *priv, const uint8_t *ct, size_t ct_len, uint8_t *ss,
                       size_t ss_len)
{
    int rc = NT_ERR_CRYPTO;
    size_t got = ss_len;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, priv, NULL);

    if (ctx == NULL || EVP_PKEY_decapsulate_init(ctx, NULL) <= 0)
        goto done;
    /* A wrong ciphertext gives the implicit-rejection key, not an error. */
    if (EVP_PKEY_decapsulate(ctx, ss, &got, ct, ct_len) <= 0 || got != ss_len)
        goto done;
    rc = NT_OK;
done:
    EVP_PKEY_CTX_free(ctx);
    if (rc != NT_OK) {
        OPENSSL_cleanse(ss, ss_len);
        return fail(rc);
    }
    return rc;
}

int nt_evp_x25519(EVP_PKEY *priv, EVP_PKEY *peer, uint8_t out[32])
{
    int rc = NT_ERR_CRYPTO;
    size_t got = 32;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, priv, NULL);

    if (ctx == NULL || EVP_PKEY_derive_init(ctx) <= 0
        || EVP_PKEY_derive_set_peer_ex(ctx, peer, 0) <= 0)
        goto done;
    if (EVP_PKEY_derive(ctx, out, &got) <= 0) {
        /* With valid keys, OpenSSL's X25519 fails only on the all-zero result. */
        rc = NT_ERR_ZERO_SECRET;
        goto done;
    }
    if (got != 32)
        goto done;
    if (nt_ct_is_zero(out, 32)) {
        rc = NT_ERR_ZERO_SECRET;
        goto done;
    }
    rc = NT_OK;
done:
    EVP_PKEY_CTX_free(ctx);
    if (rc != NT_OK) {
        OPENSSL_cleanse(out, 32);
        return fail(rc);
    }
    return rc;
}
