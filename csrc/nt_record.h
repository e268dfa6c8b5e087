/* Record protection: per-direction AEAD state with a 64-bit sequence counter,
 * sealing and opening many records per call.
 *
 * Wire format of one sealed record (see docs/record-layer.md):
 *   header (4 bytes, the AEAD's additional data):
 *       0x17 | length (3 bytes, big-endian) = len(ciphertext) + 16
 *   ciphertext = AEAD(content || inner_type), tag (16 bytes)
 * nonce = static IV XOR (0^32 || sequence as 64-bit big-endian), never sent.
 */
#ifndef NT_RECORD_H
#define NT_RECORD_H

#include "nt_common.h"

#define NT_AEAD_AES_256_GCM 1
#define NT_AEAD_AES_128_GCM 2
#define NT_AEAD_CHACHA20_POLY1305 3

#define NT_RECORD_HEADER_BYTES 4
#define NT_RECORD_TAG_BYTES 16
#define NT_RECORD_IV_BYTES 12
#define NT_RECORD_MAX_KEY_BYTES 32
#define NT_RECORD_SEALED_TYPE 0x17
/* Largest content of one record, and the default. */
#define NT_RECORD_MAX_FRAGMENT 262144
#define NT_RECORD_DEFAULT_FRAGMENT 16384
/* Records per key before sealing refuses (the caller rekeys): 2^23, well
 * inside the AES-GCM limit of RFC 8446 section 5.5 (2^24.5 full records). */
#define NT_RECORD_DEFAULT_LIMIT 8388608ULL
/* Bytes a record adds to its content: header, inner type, tag. */
#define NT_RECORD_OVERHEAD 21

typedef struct nt_aead nt_aead;

/* One opened record: its content is buf[offset, offset+length). */
typedef struct {
    size_t offset;
    size_t length;
    uint8_t type;
} nt_span;

/* What nt_open_packed did: records opened, input consumed, output written,
 * and the type and content length of the last record opened. */
typedef struct {
    size_t records;
    size_t consumed;
    size_t written;
    size_t last_length;
    uint8_t last_type;
} nt_open_summary;

int nt_aead_key_bytes(int cipher, size_t *key_len);
int nt_aead_new(int cipher, int encrypt, const uint8_t *key, size_t key_len, const uint8_t *iv,
                size_t iv_len, nt_aead **out);
/* Wipes the key schedule and IV. */
void nt_aead_free(nt_aead *st);
/* New key and IV; the sequence restarts at 0 and a failed state is cleared. */
int nt_aead_rekey(nt_aead *st, const uint8_t *key, size_t key_len, const uint8_t *iv,
                  size_t iv_len);
int nt_aead_set_limit(nt_aead *st, uint64_t records);
int nt_aead_set_max_fragment(nt_aead *st, size_t max_fragment);
int nt_aead_set_sequence(nt_aead *st, uint64_t sequence);
int nt_aead_cipher(const nt_aead *st); /* its NT_AEAD_* id; 0 for NULL */
/* 1 if st runs AES-GCM on nt_gcm.c (VAES, VPCLMULQDQ), 0 if on OpenSSL's EVP. */
int nt_aead_uses_own_gcm(const nt_aead *st);
/* Where AES-GCM keys set from now on run: choice 1 on nt_gcm.c if the CPU can,
 * 0 on OpenSSL's EVP, -1 only asks. Returns 1 if on nt_gcm.c from now on. */
int nt_aead_own_gcm(int choice);
uint64_t nt_aead_sequence(const nt_aead *st);
uint64_t nt_aead_remaining(const nt_aead *st);
size_t nt_aead_max_fragment(const nt_aead *st);

/* What the sending key may still seal before its owner updates it: the
 * owner's key-update accounting, kept here so that the bulk paths check and
 * count it in the same call that seals. */
typedef struct {
    uint64_t records; /* a seal must need fewer records than this */
    uint64_t bytes;   /* and at most this much content */
} nt_budget;

/* Returned by nt_seal_within (and nt_seal_send) when the records do not fit
 * in the budget: nothing was sealed, the caller updates its keys first. */
#define NT_DUE 2

/* Bytes that sealing plaintext_len bytes produces (0 if it would overflow). */
size_t nt_seal_size(const nt_aead *st, size_t plaintext_len);
/* Seal `in` as ceil(in_len / max_fragment) records (one empty record if
 * in_len == 0) of inner type `type` (non-zero) into `out`. All or nothing:
 * NT_ERR_LIMIT, with nothing written, if the records would pass the limit.
 * `in` must not overlap `out`, except in place for one record: in_len <=
 * max_fragment and in == out + NT_RECORD_HEADER_BYTES (nt_seal_message). */
int nt_seal(nt_aead *st, uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out,
            size_t out_cap, size_t *out_len, size_t *records);
/* nt_seal() if its records fit in *budget, which then shrinks by the records
 * and the content sealed; NT_DUE, nothing written, if they do not.
 * budget NULL: nt_seal(), no budget. */
int nt_seal_within(nt_aead *st, nt_budget *budget, uint8_t type, const uint8_t *in,
                   size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
                   size_t *records);
/* Open the complete records at the start of `in`, up to max_spans of them.
 * With out == NULL the content is decrypted in place; otherwise it is packed
 * into out (which must not overlap in). Stops after the first record whose
 * type is not batch_type, at an incomplete record, or when out is full.
 * `out` needs room for the contents only. On NT_ERR_AUTH / NT_ERR_FORMAT the
 * records before the bad one are reported in spans (they are authentic); the
 * bad one's bytes are zeroed and the state fails for good. At the record limit
 * the records before it are returned with NT_OK and the next call returns
 * NT_ERR_LIMIT (nothing fails: the caller may rekey). */
int nt_open(nt_aead *st, uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
            uint8_t batch_type, nt_span *spans, size_t max_spans, size_t *n_spans,
            size_t *consumed);

/* One AEAD operation with an explicit 12-byte nonce and additional data,
 * through the same code as the records (for known-answer tests).
 * encrypt: out = ciphertext || tag; decrypt: in = ciphertext || tag. */
/* As nt_open with `out`, but keeps only a summary: no per-record spans and no
 * bound on the record count. Every record but the last is of batch_type, so
 * out[0, written) holds their contents back to back, the last one's last.
 * At most max_records records are opened (0: no bound). */
int nt_open_packed(nt_aead *st, const uint8_t *in, size_t in_len, uint8_t *out,
                   size_t out_cap, uint8_t batch_type, size_t max_records,
                   nt_open_summary *summary);
int nt_aead_encrypt(nt_aead *st, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                    size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap);
int nt_aead_decrypt(nt_aead *st, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                    size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap);

#endif
