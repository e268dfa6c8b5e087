/* The message lane: one framed message per record, opened or sealed in one
 * call (the request/response path of the asyncio channels and of the
 * blocking sockets' send_message/recv_message, through nautilus/protocol/
 * connection.py, Connection._take_message and _seal_message). Built on the
 * record API of nt_record.h only.
 *
 * A framed message is its length as 4 bytes, big-endian, then its bytes. */
#ifndef NT_LANE_H
#define NT_LANE_H

#include "nt_common.h"
#include "nt_record.h"

/* Not errors: what nt_open_message returns when it did not find one message. */
#define NT_NOT_ONE_RECORD (-20)  /* `in` is not one whole record that fits: nothing done */
#define NT_NOT_ONE_MESSAGE (-21) /* the record was opened: `summary` says what it held */

/* Open `in` if it is exactly one whole sealed record whose content fits in
 * out[0, out_cap). Returns the message's size (>= 0) when the record is of
 * inner type `message_type` and holds exactly one framed message of at most
 * max_message bytes: its bytes are out[4, 4 + size). Otherwise
 * NT_NOT_ONE_RECORD (nothing opened, nothing changed: the caller takes its
 * general path), NT_NOT_ONE_MESSAGE (the record was opened as
 * nt_open_packed() with max_records 1 opens it: summary describes it and its
 * content is out[0, summary->written)), or an error as nt_open_packed()'s. */
int nt_open_message(nt_aead *st, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap, uint8_t message_type, size_t max_message,
                    nt_open_summary *summary);

/* Seal msg[0, msg_len) framed (its 4-byte length first) as one record of
 * inner type `type` into out, which must hold exactly msg_len + 4 +
 * NT_RECORD_OVERHEAD bytes and must not overlap msg. NT_OK; NT_DUE (nothing
 * sealed) when the record does not fit in *budget, as nt_seal_within();
 * NT_ERR_LENGTH when the framed message does not fit in one record; or an
 * error of nt_seal(). budget NULL: no budget. */
int nt_seal_message(nt_aead *st, nt_budget *budget, uint8_t type, const uint8_t *msg,
                    size_t msg_len, uint8_t *out, size_t out_cap);

#endif
