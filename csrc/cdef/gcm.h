/* cffi declarations: csrc/nt_gcm.h. Only for tests of its streaming calls
 * (records reach nt_gcm.c through nt_record.c): nt_gcm_start, nt_gcm_update
 * and the tag run VAES code, so call them only where nt_gcm_supported(). */
typedef struct { ...; } nt_gcm_key;
typedef struct { ...; } nt_gcm_run;

int nt_gcm_supported(void);
int nt_gcm_set_key(nt_gcm_key *k, const uint8_t *key, size_t key_len);
void nt_gcm_start(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t nonce[12],
                  const uint8_t *aad, size_t aad_len);
void nt_gcm_update(const nt_gcm_key *k, nt_gcm_run *r, int enc, const uint8_t *in,
                   uint8_t *out, size_t len);
void nt_gcm_tag(const nt_gcm_key *k, nt_gcm_run *r, uint8_t tag[16]);
int nt_gcm_check(const nt_gcm_key *k, nt_gcm_run *r, const uint8_t tag[16]);
