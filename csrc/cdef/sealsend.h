/* cffi declarations: csrc/nt_sealsend.h */
#define NT_PARTIAL ...

int nt_seal_send(nt_aead *st, nt_budget *budget, int fd, uint8_t type, const uint8_t *in,
                 size_t in_len, uint8_t *out, size_t out_cap, size_t *lens);
