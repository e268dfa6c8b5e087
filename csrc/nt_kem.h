/* KEMs on OpenSSL's EVP API: ML-KEM-768/1024 (FIPS 203), X25519 used as a KEM,
 * and the hybrids X25519+ML-KEM-768/1024.
 *
 * Hybrid wire format (see docs/hybrid-kem.md), as in TLS X25519MLKEM768:
 *   public share  = ML-KEM encapsulation key || X25519 public key
 *   ciphertext    = ML-KEM ciphertext         || X25519 ephemeral public key
 *   shared secret = ML-KEM shared secret      || X25519 shared secret (64 bytes)
 */
#ifndef NT_KEM_H
#define NT_KEM_H

#include "nt_common.h"

#define NT_KEM_MLKEM768 1
#define NT_KEM_MLKEM1024 2
#define NT_KEM_X25519 3
#define NT_KEM_X25519_MLKEM768 4
#define NT_KEM_X25519_MLKEM1024 5

/* Largest sizes over all algorithms, for fixed-size buffers. */
#define NT_KEM_MAX_PUBLIC_BYTES 1600
#define NT_KEM_MAX_CIPHERTEXT_BYTES 1600
#define NT_KEM_MAX_SHARED_BYTES 64
#define NT_KEM_MAX_SEED_BYTES 96
#define NT_KEM_MAX_PRIVATE_BYTES 3168
#define NT_KEM_MAX_ENTROPY_BYTES 64

typedef struct nt_key nt_key;

/* Sizes of one algorithm; NT_ERR_ARG for an unknown id. */
int nt_kem_sizes(int alg, size_t *public_len, size_t *ciphertext_len, size_t *shared_len,
                 size_t *seed_len, size_t *private_len, size_t *entropy_len);

/* New key pair: from `seed` (seed_len bytes, see nt_kem_sizes) or at random
 * when seed is NULL. ML-KEM's seed is d || z (64 bytes); X25519's is the
 * private scalar; a hybrid's is the ML-KEM seed || the X25519 scalar. */
int nt_key_generate(int alg, const uint8_t *seed, size_t seed_len, nt_key **out);
/* A public key (a hybrid's client share), with the FIPS 203 modulus check. */
int nt_key_from_public(int alg, const uint8_t *pub, size_t pub_len, nt_key **out);
/* An ML-KEM decapsulation key in its expanded form, with the FIPS 203 checks. */
int nt_key_from_private(int alg, const uint8_t *dk, size_t dk_len, nt_key **out);
void nt_key_free(nt_key *key);

int nt_key_alg(const nt_key *key);
int nt_key_has_private(const nt_key *key);
int nt_key_public_bytes(const nt_key *key, uint8_t *out, size_t out_cap, size_t *out_len);
int nt_key_seed_bytes(const nt_key *key, uint8_t *out, size_t out_cap, size_t *out_len);
int nt_key_private_bytes(const nt_key *key, uint8_t *out, size_t out_cap, size_t *out_len);

/* Encapsulate against a public key. `entropy` is NULL for fresh randomness, or
 * entropy_len bytes for known-answer tests (ML-KEM's m; X25519's ephemeral
 * scalar; a hybrid's m || scalar). Writes exactly ciphertext_len and shared_len
 * bytes. */
int nt_kem_encapsulate(const nt_key *pub, const uint8_t *entropy, size_t entropy_len,
                       uint8_t *ciphertext, size_t ciphertext_cap, uint8_t *shared,
                       size_t shared_cap);
/* Encapsulate with a prepared X25519 ephemeral key (an NT_KEM_X25519 key with
 * its private part, used for this one encapsulation) for the X25519 part of
 * `pub`, which must have one; an ML-KEM part uses fresh randomness.
 * NT_ERR_STATE when `pub` has no X25519 part or `ephemeral` is not such a key. */
int nt_kem_encapsulate_with(const nt_key *pub, const nt_key *ephemeral, uint8_t *ciphertext,
                            size_t ciphertext_cap, uint8_t *shared, size_t shared_cap);
int nt_kem_decapsulate(const nt_key *priv, const uint8_t *ciphertext, size_t ciphertext_len,
                       uint8_t *shared, size_t shared_cap);

#endif
