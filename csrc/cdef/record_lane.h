/* cffi declarations: csrc/nt_lane.h (after record.h, whose types it uses) */
#define NT_NOT_ONE_RECORD ...
#define NT_NOT_ONE_MESSAGE ...

int nt_open_message(nt_aead *st, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap, uint8_t message_type, size_t max_message,
                    nt_open_summary *summary);
int nt_seal_message(nt_aead *st, nt_budget *budget, uint8_t type, const uint8_t *msg,
                    size_t msg_len, uint8_t *out, size_t out_cap);
