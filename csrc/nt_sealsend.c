/* Seal and send in one call: see nt_sealsend.h. The send never blocks, so a
 * caller may hold a lock around it; a signal, a full socket or an error is
 * left to the caller's own write of the rest (which waits, runs signal
 * handlers and raises as a socket does). */
#define _POSIX_C_SOURCE 200809L /* send(), MSG_DONTWAIT under -std=c11 */

#include "nt_sealsend.h"

#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* no SIGPIPE flag here: Python ignores SIGPIPE anyway */
#endif

int nt_seal_send(nt_aead *st, nt_budget *budget, int fd, uint8_t type, const uint8_t *in,
                 size_t in_len, uint8_t *out, size_t out_cap, size_t *lens)
{
    size_t records = 0;
    int rc;

    if (lens == NULL)
        return NT_ERR_ARG;
    lens[0] = 0;
    lens[1] = 0;
    rc = nt_seal_within(st, budget, type, in, in_len, out, out_cap, &lens[0], &records);
    if (rc != NT_OK)
        return rc;
    if (fd < 0)
        return NT_PARTIAL; /* no socket: sealed only, all of it is the caller's to write */
    while (lens[1] < lens[0]) {
        ssize_t sent = send(fd, out + lens[1], lens[0] - lens[1], MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent <= 0)
            return NT_PARTIAL;
        lens[1] += (size_t)sent;
    }
    return NT_OK;
}
