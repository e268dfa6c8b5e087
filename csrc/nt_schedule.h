/* The handshake key schedule's primitives (docs/protocol.md, section 5):
 * HKDF-Extract and HKDF-Expand-Label on HMAC-SHA-256 (RFC 5869, RFC 8446
 * section 7.1 with our label prefix), and AEAD states keyed straight from a
 * traffic secret, so that keys and IVs never leave C. */
#ifndef NT_SCHEDULE_H
#define NT_SCHEDULE_H

#include "nt_common.h"
#include "nt_record.h"

#define NT_KDF_HASH_BYTES 32
/* Longest label (without the prefix) and context of HKDF-Expand-Label. */
#define NT_KDF_MAX_LABEL 245
#define NT_KDF_MAX_CONTEXT 255
/* Longest HKDF-Expand output: 255 blocks. */
#define NT_KDF_MAX_OUTPUT (255 * NT_KDF_HASH_BYTES)

/* out[32] = HMAC-SHA-256(salt, ikm); an empty salt is 32 zero bytes. */
int nt_hkdf_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                    uint8_t *out, size_t out_len);

/* HKDF-Expand(secret, HkdfLabel(out_len, "nautilus1 " + label, context), out_len). */
int nt_hkdf_expand_label(const uint8_t *secret, size_t secret_len, const uint8_t *label,
                         size_t label_len, const uint8_t *context, size_t context_len,
                         uint8_t *out, size_t out_len);

/* Longest key-exchange secret mixed in by nt_ks_handshake. */
#define NT_KDF_MAX_SHARED 256

/* Stages of the key schedule (docs/protocol.md, section 5), each one call with
 * one digest context; every secret and transcript hash is 32 bytes.
 * nt_ks_binder: out[32] = Finished-MAC(Derive-Secret(early, "res binder", ""), hash).
 * nt_ks_finished: out[32] = HMAC(Expand-Label(base, "finished", "", 32), hash).
 * nt_ks_handshake: out[128] = handshake secret | client hs traffic | server hs
 *   traffic | master, from the early secret and the key exchange's secret.
 * nt_ks_application: out[96] = client ap traffic | server ap traffic | exporter. */
int nt_ks_binder(const uint8_t *early, size_t early_len, const uint8_t *hash, size_t hash_len,
                 uint8_t *out, size_t out_len);
int nt_ks_finished(const uint8_t *base, size_t base_len, const uint8_t *hash, size_t hash_len,
                   uint8_t *out, size_t out_len);
int nt_ks_handshake(const uint8_t *early, size_t early_len, const uint8_t *shared,
                    size_t shared_len, const uint8_t *hash, size_t hash_len, uint8_t *out,
                    size_t out_len);
int nt_ks_application(const uint8_t *master, size_t master_len, const uint8_t *hash,
                      size_t hash_len, uint8_t *out, size_t out_len);

/* nt_aead_new / nt_aead_rekey with key = Expand-Label(secret, "key", "", key
 * length) and iv = Expand-Label(secret, "iv", "", 12). */
int nt_aead_new_from_secret(int cipher, int encrypt, const uint8_t *secret, size_t secret_len,
                            nt_aead **out);
int nt_aead_rekey_from_secret(nt_aead *st, const uint8_t *secret, size_t secret_len);

#endif
