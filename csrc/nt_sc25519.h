/* Scalars mod L, the order of Ed25519's base point, for the verifier.
 * VARIABLE TIME: for public data only. */
#ifndef NT_SC25519_H
#define NT_SC25519_H

#include <stdint.h>

/* 1 if the 256-bit little-endian s[0..31] is below L, else 0. */
int nt_sc_is_canonical(const uint8_t s[32]);

/* out = the 512-bit little-endian in[0..63] mod L, little-endian. */
void nt_sc_reduce(uint8_t out[32], const uint8_t in[64]);

/* Width-w NAF of the scalar k < 2^253 (2 <= w <= 8): naf[i] is 0 or odd with
 * |naf[i]| < 2^(w-1), k = sum naf[i] 2^i, and any two nonzero digits are at
 * least w positions apart. Returns the number of positions used (the highest
 * nonzero digit's index + 1, 0 for k = 0). */
int nt_sc_wnaf(int8_t naf[256], const uint8_t k[32], int w);

#endif
