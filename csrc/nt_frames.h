/* Message framing (the message API's stream): each message is a 4-byte
 * big-endian length, then that many bytes. Framing and cutting are done
 * here so that a burst of small messages costs no Python loop per message
 * (nautilus/protocol/connection.py: send_messages, _feed_messages). */
#ifndef NT_FRAMES_H
#define NT_FRAMES_H

#include "nt_common.h"

#define NT_FRAME_PREFIX_BYTES 4
#define NT_FRAME_MAX_LENGTH 0xFFFFFFFFu /* what the prefix can say */

/* Frame n messages that lie back to back in body[0:body_len] (message i is
 * lens[i] bytes) into out: for each, its length then its bytes. out_cap must
 * be at least body_len + 4 * n. *over = the index of the first message over
 * limit (nothing is written then), n if none. NT_ERR_LENGTH: the lengths do
 * not add up to body_len (nothing written); NT_ERR_BUFFER: out too small;
 * NT_ERR_ARG: a NULL pointer or limit over NT_FRAME_MAX_LENGTH. */
int nt_frames_pack(const uint8_t *body, size_t body_len, const uint64_t *lens, size_t n,
                   uint64_t limit, uint8_t *out, size_t out_cap, size_t *over);

/* Describe the whole frames in buf[pos:len] as a Python struct format for
 * struct.unpack_from(format, buf, pos), which then makes one bytes object per
 * frame's content in one call: "=" then "4x<length>s" per frame. Stops after
 * max_frames frames, when the format would not fit in fmt_cap bytes, before
 * an incomplete frame, or before a frame whose length is over limit (the
 * caller reads that length at result[1] and refuses it).
 * result[0] = the frames described, result[1] = where the first frame not
 * described starts (pos if none), result[2] = the format's length (0 if no
 * frame), result[3] = 1 if a whole frame was left out only for room (max_frames
 * or fmt_cap): call again from result[1]. NT_ERR_ARG: pos > len, a NULL pointer. */
int nt_frames_layout(const uint8_t *buf, size_t len, size_t pos, size_t limit, char *fmt,
                     size_t fmt_cap, size_t max_frames, size_t *result);

#endif
