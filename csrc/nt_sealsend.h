/* Seal and send in one call: the bulk path of the blocking sockets
 * (nautilus/sockets.py, NautilusSocket._send_direct). */
#ifndef NT_SEALSEND_H
#define NT_SEALSEND_H

#include "nt_common.h"
#include "nt_record.h"

/* Returned by nt_seal_send when the records were sealed but the socket did
 * not take all of them at once (full, interrupted, failed): the caller
 * writes out[lens[1]:lens[0]] itself, waiting and raising as it does. */
#define NT_PARTIAL 1

/* nt_seal_within() of in[0:in_len] into out (lens[0] = the sealed length),
 * then send() of it on the connected socket fd without waiting (MSG_DONTWAIT;
 * lens[1] = the bytes it took). NT_OK: all sent. NT_PARTIAL: sealed, the
 * rest is the caller's to write (all of it when fd < 0: seal only). Any
 * other code (NT_DUE, an error): as nt_seal_within(), nothing sealed or sent.
 * budget NULL: nt_seal(), no budget. */
int nt_seal_send(nt_aead *st, nt_budget *budget, int fd, uint8_t type, const uint8_t *in,
                 size_t in_len, uint8_t *out, size_t out_cap, size_t *lens);

#endif
