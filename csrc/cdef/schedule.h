/* cffi declarations: csrc/nt_schedule.h */
#define NT_KDF_HASH_BYTES ...
#define NT_KDF_MAX_LABEL ...
#define NT_KDF_MAX_CONTEXT ...
#define NT_KDF_MAX_OUTPUT ...
#define NT_KDF_MAX_SHARED ...

int nt_hkdf_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                    uint8_t *out, size_t out_len);
int nt_hkdf_expand_label(const uint8_t *secret, size_t secret_len, const uint8_t *label,
                         size_t label_len, const uint8_t *context, size_t context_len,
                         uint8_t *out, size_t out_len);
int nt_ks_binder(const uint8_t *early, size_t early_len, const uint8_t *hash, size_t hash_len,
                 uint8_t *out, size_t out_len);
int nt_ks_finished(const uint8_t *base, size_t base_len, const uint8_t *hash, size_t hash_len,
                   uint8_t *out, size_t out_len);
int nt_ks_handshake(const uint8_t *early, size_t early_len, const uint8_t *shared,
                    size_t shared_len, const uint8_t *hash, size_t hash_len, uint8_t *out,
                    size_t out_len);
int nt_ks_application(const uint8_t *master, size_t master_len, const uint8_t *hash,
                      size_t hash_len, uint8_t *out, size_t out_len);
int nt_aead_new_from_secret(int cipher, int encrypt, const uint8_t *secret, size_t secret_len,
                            nt_aead **out);
int nt_aead_rekey_from_secret(nt_aead *st, const uint8_t *secret, size_t secret_len);
