/* KEM dispatch: one table of per-algorithm facts; hybrids are an ML-KEM part
 * followed by an X25519 part in every byte string (see nt_kem.h). */
#include "nt_kem.h"

#include <openssl/crypto.h>
#include <string.h>

#include "nt_evp.h"

#define X25519_BYTES 32
#define MLKEM_SHARED_BYTES 32
#define MLKEM_SEED_BYTES 64
#define MLKEM_ENTROPY_BYTES 32

typedef struct {
    int alg;
    const char *mlkem; /* OpenSSL name of the ML-KEM part, or NULL */
    int has_x25519;
    size_t mlkem_public, mlkem_ciphertext, mlkem_private;
} nt_kem_desc;

static const nt_kem_desc KEMS[] = {
    {NT_KEM_MLKEM768, "ML-KEM-768", 0, 1184, 1088, 2400},
    {NT_KEM_MLKEM1024, "ML-KEM-1024", 0, 1568, 1568, 3168},
    {NT_KEM_X25519, NULL, 1, 0, 0, 0},
    {NT_KEM_X25519_MLKEM768, "ML-KEM-768", 1, 1184, 1088, 2400},
    {NT_KEM_X25519_MLKEM1024, "ML-KEM-1024", 1, 1568, 1568, 3168},
};

struct nt_key {
    const nt_kem_desc *desc;
    EVP_PKEY *mlkem;
    EVP_PKEY *x25519;
    int has_private;
};

static const nt_kem_desc *find(int alg)
{
    for (size_t i = 0; i < sizeof(KEMS) / sizeof(KEMS[0]); i++)
        if (KEMS[i].alg == alg)
            return &KEMS[i];
    return NULL;
}

static size_t x_part(const nt_kem_desc *d)
{
    return d->has_x25519 ? X25519_BYTES : 0;
}
static size_t pub_len(const nt_kem_desc *d)
{
    return d->mlkem_public + x_part(d);
}
static size_t ct_len(const nt_kem_desc *d)
{
    return d->mlkem_ciphertext + x_part(d);
}
static size_t ss_len(const nt_kem_desc *d)
{
    return (d->mlkem ? MLKEM_SHARED_BYTES : 0) + x_part(d);
}
static size_t seed_len(const nt_kem_desc *d)
{
    return (d->mlkem ? MLKEM_SEED_BYTES : 0) + x_part(d);
}
static size_t entropy_len(const nt_kem_desc *d)
{
    return (d->mlkem ? MLKEM_ENTROPY_BYTES : 0) + x_part(d);
}
static size_t private_len(const nt_kem_desc *d)
{
    return d->has_x25519 ? 0 : d->mlkem_private; /* expanded form: pure ML-KEM only */
}

int nt_kem_sizes(int alg, size_t *public_len, size_t *ciphertext_len, size_t *shared_len,
                 size_t *seed_len_out, size_t *private_len_out, size_t *entropy_len_out)
{
    const nt_kem_desc *d = find(alg);
    if (d == NULL || public_len == NULL || ciphertext_len == NULL || shared_len == NULL
        || seed_len_out == NULL || private_len_out == NULL || entropy_len_out == NULL)
        return NT_ERR_ARG;
    *public_len = pub_len(d);
    *ciphertext_len = ct_len(d);
    *shared_len = ss_len(d);
    *seed_len_out = seed_len(d);
    *private_len_out = private_len(d);
    *entropy_len_out = entropy_len(d);
    return NT_OK;
}

static nt_key *key_new(const nt_kem_desc *d)
{
    nt_key *k = OPENSSL_zalloc(sizeof(*k));
    if (k != NULL)
        k->desc = d;
    return k;
}

void nt_key_free(nt_key *key)
{
    if (key == NULL)
        return;
    EVP_PKEY_free(key->mlkem); /* OpenSSL cleanses private key material */
    EVP_PKEY_free(key->x25519);
    OPENSSL_clear_free(key, sizeof(*key));
}

int nt_key_generate(int alg, const uint8_t *seed, size_t seed_length, nt_key **out)
{
    const nt_kem_desc *d = find(alg);
    nt_key *k;
    int rc = NT_OK;

    if (out == NULL)
        return NT_ERR_ARG;
    *out = NULL;
    if (d == NULL)
        return NT_ERR_ARG;
    if (seed != NULL && seed_length != seed_len(d))
        return NT_ERR_LENGTH;
    if ((k = key_new(d)) == NULL)
        return NT_ERR_NOMEM;
    if (d->mlkem)
        rc = nt_evp_generate(d->mlkem, seed, MLKEM_SEED_BYTES, &k->mlkem);
    if (rc == NT_OK && d->has_x25519) {
        const uint8_t *xs = seed != NULL ? seed + (d->mlkem ? MLKEM_SEED_BYTES : 0) : NULL;
        rc = nt_evp_generate("X25519", xs, X25519_BYTES, &k->x25519);
    }
    if (rc != NT_OK) {
        nt_key_free(k);
        return rc;
    }
    k->has_private = 1;
    *out = k;
    return NT_OK;
}

int nt_key_from_public(int alg, const uint8_t *pub, size_t pub_length, nt_key **out)
{
    const nt_kem_desc *d = find(alg);
    nt_key *k;
    int rc = NT_OK;

    if (out == NULL)
        return NT_ERR_ARG;
    *out = NULL;
    if (d == NULL || pub == NULL)
        return NT_ERR_ARG;
    if (pub_length != pub_len(d))
        return NT_ERR_LENGTH;
    if ((k = key_new(d)) == NULL)
        return NT_ERR_NOMEM;
    if (d->mlkem)
        rc = nt_evp_from_public(d->mlkem, pub, d->mlkem_public, &k->mlkem);
    if (rc == NT_OK && d->has_x25519)
        rc = nt_evp_from_public("X25519", pub + d->mlkem_public, X25519_BYTES, &k->x25519);
    if (rc != NT_OK) {
        nt_key_free(k);
        return rc;
    }
    *out = k;
    return NT_OK;
}

int nt_key_from_private(int alg, const uint8_t *dk, size_t dk_length, nt_key **out)
{
    const nt_kem_desc *d = find(alg);
    nt_key *k;
    int rc;

    if (out == NULL)
        return NT_ERR_ARG;
    *out = NULL;
    if (d == NULL || dk == NULL || private_len(d) == 0)
        return NT_ERR_ARG;
    if (dk_length != private_len(d))
        return NT_ERR_LENGTH;
    if ((k = key_new(d)) == NULL)
        return NT_ERR_NOMEM;
    rc = nt_evp_from_private(d->mlkem, dk, dk_length, &k->mlkem);
    if (rc != NT_OK) {
        nt_key_free(k);
        return rc;
    }
    k->has_private = 1;
    *out = k;
    return NT_OK;
}

int nt_key_alg(const nt_key *key)
{
    return key != NULL ? key->desc->alg : NT_ERR_ARG;
}

int nt_key_has_private(const nt_key *key)
{
    return key != NULL && key->has_private;
}

int nt_key_public_bytes(const nt_key *key, uint8_t *out, size_t out_cap, size_t *out_len)
{
    int rc = NT_OK;
    if (key == NULL || out == NULL || out_len == NULL)
        return NT_ERR_ARG;
    *out_len = 0;
    if (out_cap < pub_len(key->desc))
        return NT_ERR_BUFFER;
    if (key->mlkem)
        rc = nt_evp_raw_public(key->mlkem, out, key->desc->mlkem_public);
    if (rc == NT_OK && key->x25519)
        rc = nt_evp_raw_public(key->x25519, out + key->desc->mlkem_public, X25519_BYTES);
    if (rc == NT_OK)
        *out_len = pub_len(key->desc);
    return rc;
}

int nt_key_seed_bytes(const nt_key *key, uint8_t *out, size_t out_cap, size_t *out_len)
{
    int rc = NT_OK;
    if (key == NULL || out == NULL || out_len == NULL)
        return NT_ERR_ARG;
    *out_len = 0;
    if (!key->has_private)
        return NT_ERR_STATE;
    if (out_cap < seed_len(key->desc))
        return NT_ERR_BUFFER;
    if (key->mlkem)
        rc = nt_evp_mlkem_seed(key->mlkem, out, MLKEM_SEED_BYTES);
    if (rc == NT_OK && key->x25519)
        rc = nt_evp_raw_private(key->x25519, out + (key->mlkem ? MLKEM_SEED_BYTES : 0),
                                X25519_BYTES);
    if (rc != NT_OK) {
        OPENSSL_cleanse(out, seed_len(key->desc));
        return rc;
    }
    *out_len = seed_len(key->desc);
    return NT_OK;
}

int nt_key_private_bytes(const nt_key *key, uint8_t *out, size_t out_cap, size_t *out_len)
{
    int rc;
    if (key == NULL || out == NULL || out_len == NULL)
        return NT_ERR_ARG;
    *out_len = 0;
    if (!key->has_private || private_len(key->desc) == 0)
        return NT_ERR_STATE;
    if (out_cap < private_len(key->desc))
        return NT_ERR_BUFFER;
    rc = nt_evp_raw_private(key->mlkem, out, private_len(key->desc));
    if (rc == NT_OK)
        *out_len = private_len(key->desc);
    return rc;
}

/* X25519 as a KEM with the ephemeral key `eph`: its public key is the ciphertext. */
static int x25519_encap_with(EVP_PKEY *eph, EVP_PKEY *peer, uint8_t ct[32], uint8_t ss[32])
{
    int rc = nt_evp_raw_public(eph, ct, X25519_BYTES);
    if (rc == NT_OK)
        rc = nt_evp_x25519(eph, peer, ss);
    return rc;
}

/* X25519 as a KEM: a fresh ephemeral key (from `scalar`, or random when NULL). */
static int x25519_encap(EVP_PKEY *peer, const uint8_t *scalar, uint8_t ct[32], uint8_t ss[32])
{
    EVP_PKEY *eph = NULL;
    int rc = nt_evp_generate("X25519", scalar, X25519_BYTES, &eph);
    if (rc == NT_OK)
        rc = x25519_encap_with(eph, peer, ct, ss);
    EVP_PKEY_free(eph);
    return rc;
}

static int x25519_decap(EVP_PKEY *priv, const uint8_t ct[32], uint8_t ss[32])
{
    EVP_PKEY *peer = NULL;
    int rc = nt_evp_from_public("X25519", ct, X25519_BYTES, &peer);
    if (rc == NT_OK)
        rc = nt_evp_x25519(priv, peer, ss);
    EVP_PKEY_free(peer);
    return rc;
}

static int encapsulate(const nt_key *pub, const nt_key *eph, const uint8_t *entropy,
                       size_t entropy_length, uint8_t *ciphertext, size_t ciphertext_cap,
                       uint8_t *shared, size_t shared_cap)
{
    const nt_kem_desc *d;
    int rc = NT_OK;
    size_t ss_off = 0;

    if (pub == NULL || ciphertext == NULL || shared == NULL)
        return NT_ERR_ARG;
    d = pub->desc;
    if (entropy != NULL && entropy_length != entropy_len(d))
        return NT_ERR_LENGTH;
    if (ciphertext_cap < ct_len(d) || shared_cap < ss_len(d))
        return NT_ERR_BUFFER;
    if (d->mlkem) {
        rc = nt_evp_mlkem_encap(pub->mlkem, entropy, ciphertext, d->mlkem_ciphertext, shared,
                                MLKEM_SHARED_BYTES);
        ss_off = MLKEM_SHARED_BYTES;
    }
    if (rc == NT_OK && d->has_x25519) {
        const uint8_t *scalar =
            entropy != NULL ? entropy + (d->mlkem ? MLKEM_ENTROPY_BYTES : 0) : NULL;
        uint8_t *ct = ciphertext + d->mlkem_ciphertext;
        rc = eph != NULL ? x25519_encap_with(eph->x25519, pub->x25519, ct, shared + ss_off)
                         : x25519_encap(pub->x25519, scalar, ct, shared + ss_off);
    }
    if (rc != NT_OK)
        OPENSSL_cleanse(shared, ss_len(d));
    return rc;
}

int nt_kem_encapsulate(const nt_key *pub, const uint8_t *entropy, size_t entropy_length,
                       uint8_t *ciphertext, size_t ciphertext_cap, uint8_t *shared,
                       size_t shared_cap)
{
    return encapsulate(pub, NULL, entropy, entropy_length, ciphertext, ciphertext_cap, shared,
                       shared_cap);
}

int nt_kem_encapsulate_with(const nt_key *pub, const nt_key *ephemeral, uint8_t *ciphertext,
                            size_t ciphertext_cap, uint8_t *shared, size_t shared_cap)
{
    if (pub == NULL || ephemeral == NULL)
        return NT_ERR_ARG;
    if (!pub->desc->has_x25519 || ephemeral->desc->alg != NT_KEM_X25519
        || !ephemeral->has_private)
        return NT_ERR_STATE;
    return encapsulate(pub, ephemeral, NULL, 0, ciphertext, ciphertext_cap, shared, shared_cap);
}

int nt_kem_decapsulate(const nt_key *priv, const uint8_t *ciphertext, size_t ciphertext_len,
                       uint8_t *shared, size_t shared_cap)
{
    const nt_kem_desc *d;
    int rc = NT_OK;
    size_t ss_off = 0;

    if (priv == NULL || ciphertext == NULL || shared == NULL)
        return NT_ERR_ARG;
    d = priv->desc;
    if (!priv->has_private)
        return NT_ERR_STATE;
    if (ciphertext_len != ct_len(d))
        return NT_ERR_LENGTH;
    if (shared_cap < ss_len(d))
        return NT_ERR_BUFFER;
    if (d->mlkem) {
        rc = nt_evp_mlkem_decap(priv->mlkem, ciphertext, d->mlkem_ciphertext, shared,
                                MLKEM_SHARED_BYTES);
        ss_off = MLKEM_SHARED_BYTES;
    }
    if (rc == NT_OK && d->has_x25519)
        rc = x25519_decap(priv->x25519, ciphertext + d->mlkem_ciphertext, shared + ss_off);
    if (rc != NT_OK)
        OPENSSL_cleanse(shared, ss_len(d));
    return rc;
}
