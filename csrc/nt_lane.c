/* The message lane: see nt_lane.h. */
#include "nt_lane.h"

#include <openssl/crypto.h>
#include <string.h>

#define FRAME_PREFIX 4

int nt_open_message(nt_aead *st, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap, uint8_t message_type, size_t max_message,
                    nt_open_summary *summary)
{
    size_t body, size;
    int rc;

    if (st == NULL || summary == NULL || (in == NULL && in_len > 0)
        || (out == NULL && out_cap > 0))
        return NT_ERR_ARG;
    memset(summary, 0, sizeof(*summary));
    if (in_len < NT_RECORD_HEADER_BYTES + 1 + NT_RECORD_TAG_BYTES || out == NULL
        || in[0] != NT_RECORD_SEALED_TYPE)
        return NT_NOT_ONE_RECORD;
    body = ((size_t)in[1] << 16) | ((size_t)in[2] << 8) | in[3];
    if (body != in_len - NT_RECORD_HEADER_BYTES || body - 1 - NT_RECORD_TAG_BYTES > out_cap)
        return NT_NOT_ONE_RECORD;
    rc = nt_open_packed(st, in, in_len, out, out_cap, message_type, 1, summary);
    if (rc != NT_OK)
        return rc;
    if (summary->records != 1)
        return NT_NOT_ONE_RECORD; /* (not reached: the record was whole and fitted) */
    if (summary->last_type != message_type || summary->written < FRAME_PREFIX)
        return NT_NOT_ONE_MESSAGE;
    size = ((size_t)out[0] << 24) | ((size_t)out[1] << 16) | ((size_t)out[2] << 8) | out[3];
    if (size != summary->written - FRAME_PREFIX || size > max_message || size > INT32_MAX)
        return NT_NOT_ONE_MESSAGE;
    return (int)size;
}

int nt_seal_message(nt_aead *st, nt_budget *budget, uint8_t type, const uint8_t *msg,
                    size_t msg_len, uint8_t *out, size_t out_cap)
{
    size_t framed, sealed = 0, records = 0;
    uint8_t *plain;
    int rc;

    if (st == NULL || out == NULL || (msg == NULL && msg_len > 0))
        return NT_ERR_ARG;
    if (msg_len > nt_aead_max_fragment(st) || msg_len + FRAME_PREFIX > nt_aead_max_fragment(st))
        return NT_ERR_LENGTH;
    framed = msg_len + FRAME_PREFIX;
    if (out_cap != framed + NT_RECORD_OVERHEAD)
        return NT_ERR_BUFFER;
    /* The framed message goes where its record's content goes, and is sealed
     * in place (one record: the input and output regions coincide exactly). */
    plain = out + NT_RECORD_HEADER_BYTES;
    plain[0] = (uint8_t)(msg_len >> 24);
    plain[1] = (uint8_t)(msg_len >> 16);
    plain[2] = (uint8_t)(msg_len >> 8);
    plain[3] = (uint8_t)msg_len;
    if (msg_len > 0)
        memcpy(plain + FRAME_PREFIX, msg, msg_len);
    rc = nt_seal_within(st, budget, type, plain, framed, out, out_cap, &sealed, &records);
    if (rc != NT_OK)
        OPENSSL_cleanse(out, out_cap); /* no copy of the message left behind */
    return rc;
}
