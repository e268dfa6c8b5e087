/* Ed25519 signature verification (RFC 8032 section 5.1.7), with exactly the
 * accept/reject behaviour of OpenSSL 3.x's Ed25519 verify:
 *   - S must be below the group order L (else reject);
 *   - the public key A is decoded as RFC 8032 section 5.1.3, except that a
 *     y >= p is taken mod p and x = 0 with the sign bit set is accepted;
 *     a y with no x on the curve rejects;
 *   - no cofactor: R' = [S]B - [SHA-512(R || A || M) mod L]A is encoded
 *     canonically and compared with the 32 bytes of R (so a non-canonical R
 *     never verifies); R and A enter the hash as given.
 * Variable time: only public data is involved. */
#ifndef NT_ED25519_H
#define NT_ED25519_H

#include "nt_common.h"

#define NT_ED25519_PUBLIC_BYTES 32
#define NT_ED25519_SIGNATURE_BYTES 64

/* NT_OK if sig is a valid signature of msg under pub, NT_ERR_AUTH if not (for
 * any reason, a malformed key or signature included); NT_ERR_ARG for NULL
 * pointers, NT_ERR_LENGTH for wrong key or signature lengths, NT_ERR_NOMEM or
 * NT_ERR_CRYPTO when OpenSSL's SHA-512 fails. */
int nt_ed25519_verify(const uint8_t *pub, size_t pub_len, const uint8_t *sig, size_t sig_len,
                      const uint8_t *msg, size_t msg_len);

#endif
