/* cffi declarations: csrc/nt_record.h */
#define NT_AEAD_AES_256_GCM ...
#define NT_AEAD_AES_128_GCM ...
#define NT_AEAD_CHACHA20_POLY1305 ...
#define NT_RECORD_HEADER_BYTES ...
#define NT_RECORD_TAG_BYTES ...
#define NT_RECORD_IV_BYTES ...
#define NT_RECORD_MAX_KEY_BYTES ...
#define NT_RECORD_SEALED_TYPE ...
#define NT_RECORD_MAX_FRAGMENT ...
#define NT_RECORD_DEFAULT_FRAGMENT ...
#define NT_RECORD_DEFAULT_LIMIT ...
#define NT_RECORD_OVERHEAD ...

typedef struct nt_aead nt_aead;
typedef struct {
    size_t offset;
    size_t length;
    uint8_t type;
} nt_span;

/* What nt_open_packed did: records opened, input consumed, output written,
 * and the type and content length of the last record opened. */
typedef struct {
    size_t records;
    size_t consumed;
    size_t written;
    size_t last_length;
    uint8_t last_type;
} nt_open_summary;

int nt_aead_key_bytes(int cipher, size_t *key_len);
int nt_aead_new(int cipher, int encrypt, const uint8_t *key, size_t key_len, const uint8_t *iv,
                size_t iv_len, nt_aead **out);
void nt_aead_free(nt_aead *st);
int nt_aead_rekey(nt_aead *st, const uint8_t *key, size_t key_len, const uint8_t *iv,
                  size_t iv_len);
int nt_aead_set_limit(nt_aead *st, uint64_t records);
int nt_aead_set_max_fragment(nt_aead *st, size_t max_fragment);
int nt_aead_set_sequence(nt_aead *st, uint64_t sequence);
int nt_aead_cipher(const nt_aead *st); /* its NT_AEAD_* id; 0 for NULL */
/* 1 if st runs AES-GCM on nt_gcm.c (VAES, VPCLMULQDQ), 0 if on OpenSSL's EVP. */
int nt_aead_uses_own_gcm(const nt_aead *st);
/* Where AES-GCM keys set from now on run: choice 1 on nt_gcm.c if the CPU can,
 * 0 on OpenSSL's EVP, -1 only asks. Returns 1 if on nt_gcm.c from now on. */
int nt_aead_own_gcm(int choice);
uint64_t nt_aead_sequence(const nt_aead *st);
uint64_t nt_aead_remaining(const nt_aead *st);
size_t nt_aead_max_fragment(const nt_aead *st);
size_t nt_seal_size(const nt_aead *st, size_t plaintext_len);
int nt_seal(nt_aead *st, uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out,
            size_t out_cap, size_t *out_len, size_t *records);
typedef struct {
    uint64_t records;
    uint64_t bytes;
} nt_budget;
#define NT_DUE ...
int nt_seal_within(nt_aead *st, nt_budget *budget, uint8_t type, const uint8_t *in,
                   size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
                   size_t *records);
int nt_open(nt_aead *st, uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
            uint8_t batch_type, nt_span *spans, size_t max_spans, size_t *n_spans,
            size_t *consumed);
int nt_open_packed(nt_aead *st, const uint8_t *in, size_t in_len, uint8_t *out,
                   size_t out_cap, uint8_t batch_type, size_t max_records,
                   nt_open_summary *summary);
int nt_aead_encrypt(nt_aead *st, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                    size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap);
int nt_aead_decrypt(nt_aead *st, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                    size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out,
                    size_t out_cap);
