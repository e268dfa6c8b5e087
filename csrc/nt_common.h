/* Nautilus C core: shared definitions (error codes, limits, helpers).
 * Every function returns NT_OK (0) or a negative NT_ERR_* code; outputs are
 * zeroed on error where they could hold secret or partial data. */
#ifndef NT_COMMON_H
#define NT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define NT_OK 0
#define NT_ERR_ARG (-1)         /* NULL pointer or unknown algorithm id */
#define NT_ERR_LENGTH (-2)      /* an input has the wrong length */
#define NT_ERR_INVALID_KEY (-3) /* a key failed the FIPS 203 / format checks */
#define NT_ERR_CRYPTO (-4)      /* OpenSSL reported a failure */
#define NT_ERR_ZERO_SECRET (-5) /* X25519 gave the all-zero shared secret */
#define NT_ERR_AUTH (-6)        /* AEAD tag did not verify */
#define NT_ERR_LIMIT (-7)       /* record limit or counter end reached: rekey */
#define NT_ERR_NOMEM (-8)       /* allocation failed */
#define NT_ERR_FORMAT (-9)      /* malformed record */
#define NT_ERR_BUFFER (-10)     /* output buffer too small */
#define NT_ERR_STATE (-11)      /* object unusable (failed before) or lacks data */

const char *nt_version(void);
unsigned long nt_openssl_version_num(void);
const char *nt_openssl_version_text(void);

#endif
