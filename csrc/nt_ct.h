/* Constant-time helpers, in one place. */
#ifndef NT_CT_H
#define NT_CT_H

#include <stddef.h>
#include <stdint.h>

/* 1 if all n bytes are zero, else 0; time depends only on n. */
static inline int nt_ct_is_zero(const uint8_t *p, size_t n)
{
    volatile uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return (int)((((unsigned)acc) - 1u) >> 8) & 1;
}

#endif
