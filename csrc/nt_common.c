/* Version information for the import-time checks in nautilus._bindings. */
#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include "nt_common.h"

#ifndef NT_PACKAGE_VERSION
#error "NT_PACKAGE_VERSION must be defined by build_ffi.py"
#endif

const char *nt_version(void)
{
    return NT_PACKAGE_VERSION;
}

unsigned long nt_openssl_version_num(void)
{
    return OpenSSL_version_num();
}

const char *nt_openssl_version_text(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}
