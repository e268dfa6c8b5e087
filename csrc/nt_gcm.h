/* AES-GCM (NIST SP 800-38D) with 96-bit nonces and 16-byte tags, for x86-64
 * CPUs with VAES and VPCLMULQDQ on 256-bit registers but without AVX-512 (AMD
 * Zen 3 and later, Intel Alder Lake and later), where OpenSSL 3.5 has no code of
 * this kind and falls back to its 128-bit AES-NI code. Everywhere else
 * nt_gcm_supported() is 0 and records use OpenSSL's EVP AES-GCM.
 *
 * GHASH is computed as POLYVAL (RFC 8452, appendix A): blocks are byte-reversed,
 * H becomes mulX_POLYVAL(ByteReverse(H)), and the result is byte-reversed back.
 * Nothing here allocates; the key is expanded once, a run lives on the stack. */
#ifndef NT_GCM_H
#define NT_GCM_H

#include <stddef.h>
#include <stdint.h>

#define NT_GCM_BLOCK 16
#define NT_GCM_NONCE_BYTES 12
#define NT_GCM_TAG_BYTES 16
#define NT_GCM_MAX_ROUNDS 14
#define NT_GCM_POWERS 16 /* blocks per step of the bulk loop */

typedef struct {
    uint8_t rk[NT_GCM_MAX_ROUNDS + 1][2 * NT_GCM_BLOCK]; /* AES round keys, each twice */
    uint8_t hp[NT_GCM_POWERS][NT_GCM_BLOCK];             /* H^16 .. H^1, POLYVAL form */
    uint8_t hk[NT_GCM_POWERS][NT_GCM_BLOCK];             /* their halves xored, twice */
    int rounds;                                          /* 10 (AES-128) or 14 (AES-256) */
} nt_gcm_key;

/* One message under one nonce: what the streaming calls carry between them. */
typedef struct {
    uint8_t iv[NT_GCM_BLOCK];   /* nonce || 0: the counter goes in the last 4 bytes */
    uint8_t ekj0[NT_GCM_BLOCK]; /* E(K, J0), xored into the tag */
    uint8_t acc[NT_GCM_BLOCK];  /* POLYVAL accumulator */
    uint8_t ks[NT_GCM_BLOCK];   /* keystream of the block in progress */
    uint8_t part[NT_GCM_BLOCK]; /* its ciphertext so far (for GHASH) */
    uint32_t ctr;               /* counter of the next keystream block */
    size_t npart;               /* bytes of the block in progress (0..15) */
    uint64_t aad_len, ct_len;   /* bytes */
} nt_gcm_run;

/* 1 if this CPU (and its OS) can run this code and OpenSSL would not run its
 * AVX-512 VAES code there. */
int nt_gcm_supported(void);
/* Expand a 16- or 32-byte key; NT_ERR_LENGTH otherwise, NT_ERR_STATE when unsupported. */
int nt_gcm_set_key(nt_gcm_key *k, const uint8_t *key, size_t key_len);
/* Begin a message: nonce, then the whole associated data. */
void nt_gcm_start(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t nonce[NT_GCM_NONCE_BYTES],
                  const uint8_t *aad, size_t aad_len);
/* Encrypt (enc = 1) or decrypt len bytes; in and out are the same or disjoint.
 * A message may hold at most 2^32 - 2 blocks (SP 800-38D: 2^36 - 32 bytes): the
 * 32-bit counter would wrap past that. The caller bounds it (records are at most
 * NT_RECORD_MAX_FRAGMENT, the one-shot AEAD INT_MAX bytes). */
void nt_gcm_update(const nt_gcm_key *k, nt_gcm_run *r, int enc, const uint8_t *in,
                   uint8_t *out, size_t len);
/* End the message: its tag. The run is wiped. */
void nt_gcm_tag(const nt_gcm_key *k, nt_gcm_run *r, uint8_t tag[NT_GCM_TAG_BYTES]);
/* End the message and compare its tag with `tag` in constant time: NT_OK or
 * NT_ERR_AUTH. The run is wiped. */
int nt_gcm_check(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t tag[NT_GCM_TAG_BYTES]);

#endif
