/* cffi declarations: csrc/nt_frames.h */
#define NT_FRAME_PREFIX_BYTES ...

int nt_frames_pack(const uint8_t *body, size_t body_len, const uint64_t *lens, size_t n,
                   uint64_t limit, uint8_t *out, size_t out_cap, size_t *over);
int nt_frames_layout(const uint8_t *buf, size_t len, size_t pos, size_t limit, char *fmt,
                     size_t fmt_cap, size_t max_frames, size_t *result);
