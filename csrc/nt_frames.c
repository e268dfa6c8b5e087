/* Message framing: see nt_frames.h. */
#include "nt_frames.h"

#include <string.h>

static void put_length(uint8_t *p, size_t n)
{
    p[0] = (uint8_t)(n >> 24);
    p[1] = (uint8_t)(n >> 16);
    p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
}

static size_t get_length(const uint8_t *p)
{
    return ((size_t)p[0] << 24) | ((size_t)p[1] << 16) | ((size_t)p[2] << 8) | (size_t)p[3];
}

int nt_frames_pack(const uint8_t *body, size_t body_len, const uint64_t *lens, size_t n,
                   uint64_t limit, uint8_t *out, size_t out_cap, size_t *over)
{
    size_t sum = 0, in = 0, at = 0;

    if (over == NULL)
        return NT_ERR_ARG;
    *over = n;
    if ((body == NULL && body_len > 0) || (lens == NULL && n > 0) || out == NULL
        || limit > NT_FRAME_MAX_LENGTH)
        return NT_ERR_ARG;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > limit) {
            *over = i;
            return NT_OK;
        }
        if (lens[i] > body_len - sum)
            return NT_ERR_LENGTH;
        sum += (size_t)lens[i];
    }
    if (sum != body_len)
        return NT_ERR_LENGTH;
    if (n > (SIZE_MAX - body_len) / NT_FRAME_PREFIX_BYTES
        || out_cap < body_len + n * NT_FRAME_PREFIX_BYTES)
        return NT_ERR_BUFFER;
    for (size_t i = 0; i < n; i++) {
        size_t len = (size_t)lens[i];
        put_length(out + at, len);
        at += NT_FRAME_PREFIX_BYTES;
        if (len > 0)
            memcpy(out + at, body + in, len);
        at += len;
        in += len;
    }
    return NT_OK;
}

/* Append "4x<n>s" at fmt + at if it fits before cap; the new end, or 0. */
static size_t put_item(char *fmt, size_t at, size_t cap, size_t n)
{
    char digits[24];
    size_t k = 0;

    do {
        digits[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    if (cap - at < 3 + k)
        return 0;
    fmt[at++] = '4';
    fmt[at++] = 'x';
    while (k > 0)
        fmt[at++] = digits[--k];
    fmt[at++] = 's';
    return at;
}

int nt_frames_layout(const uint8_t *buf, size_t len, size_t pos, size_t limit, char *fmt,
                     size_t fmt_cap, size_t max_frames, size_t *result)
{
    size_t found = 0, at = 1;
    size_t last_n = SIZE_MAX, last_at = 0, last_len = 0; /* the previous item */

    if (result == NULL)
        return NT_ERR_ARG;
    result[0] = 0;
    result[1] = pos;
    result[2] = 0;
    result[3] = 0;
    if ((buf == NULL && len > 0) || pos > len || fmt == NULL || fmt_cap < 1)
        return NT_ERR_ARG;
    fmt[0] = '=';
    while (len - pos >= NT_FRAME_PREFIX_BYTES) {
        size_t n = get_length(buf + pos), next;
        if (n > limit || n > len - pos - NT_FRAME_PREFIX_BYTES)
            break; /* over the limit (the caller refuses it), or incomplete */
        if (found == max_frames) {
            result[3] = 1;
            break;
        }
        if (n == last_n) { /* like-sized messages: the previous item again */
            if (fmt_cap - at < last_len) {
                result[3] = 1;
                break;
            }
            memcpy(fmt + at, fmt + last_at, last_len);
            last_at = at;
            at += last_len;
        } else {
            if ((next = put_item(fmt, at, fmt_cap, n)) == 0) {
                result[3] = 1;
                break;
            }
            last_n = n;
            last_at = at;
            last_len = next - at;
            at = next;
        }
        pos += NT_FRAME_PREFIX_BYTES + n;
        found++;
    }
    result[0] = found;
    result[1] = pos;
    result[2] = found > 0 ? at : 0;
    return NT_OK;
}
