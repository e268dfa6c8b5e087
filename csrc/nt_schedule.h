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

/* nt_aead_new / nt_aead_rekey with key = Expand-Label(secret, "key", "", key
 * length) and iv = Expand-Label(secret, "iv", "", 12). */
int nt_aead_new_from_secret(int cipher, int encrypt, const uint8_t *secret, size_t secret_len,
                            nt_aead **out);
int nt_aead_rekey_from_secret(nt_aead *st, const uint8_t *secret, size_t secret_len);

#endif
