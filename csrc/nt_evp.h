/* Internal: thin, checked wrappers over OpenSSL EVP for one ML-KEM or X25519 key. */
#ifndef NT_EVP_H
#define NT_EVP_H

#include <openssl/evp.h>

#include "nt_common.h"

/* OpenSSL algorithm names: "ML-KEM-768", "ML-KEM-1024", "X25519". */
int nt_evp_generate(const char *name, const uint8_t *seed, size_t seed_len, EVP_PKEY **out);
int nt_evp_from_public(const char *name, const uint8_t *pub, size_t len, EVP_PKEY **out);
int nt_evp_from_private(const char *name, const uint8_t *priv, size_t len, EVP_PKEY **out);
int nt_evp_raw_public(const EVP_PKEY *pkey, uint8_t *out, size_t len);
int nt_evp_raw_private(const EVP_PKEY *pkey, uint8_t *out, size_t len);
int nt_evp_mlkem_seed(const EVP_PKEY *pkey, uint8_t *out, size_t len);
int nt_evp_mlkem_encap(EVP_PKEY *pub, const uint8_t *m, uint8_t *ct, size_t ct_len,
                       uint8_t *ss, size_t ss_len);
int nt_evp_mlkem_decap(EVP_PKEY *priv, const uint8_t *ct, size_t ct_len, uint8_t *ss,
                       size_t ss_len);
/* X25519(priv, peer) into out[32]; rejects the all-zero result. */
int nt_evp_x25519(EVP_PKEY *priv, EVP_PKEY *peer, uint8_t out[32]);

#endif
