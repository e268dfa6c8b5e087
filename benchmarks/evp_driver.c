/* Raw EVP AES-256-GCM record throughput: the ceiling for Nautilus's batched
 * record sealing and opening (benchmarks/run_primitives.py compiles and runs it).
 *
 * For each record size S it seals ~1 MiB of content as records of S bytes,
 * doing per record what csrc/nt_record.c does and nothing more: write the
 * 4-byte header, nonce = iv XOR seq, set the IV, the header as AAD, encrypt
 * the content then the 1-byte inner type, finish and get the tag. Opening is
 * the reverse into a packed output buffer, checking the tag and the type byte.
 * A "one update" variant encrypts content || type with one EVP_CipherUpdate
 * from a buffer already laid out that way (what a single update would cost).
 *
 * Passes over the buffer repeat until a time bound; the median pass gives the
 * figure. Output is one JSON object on stdout.
 *
 * usage: evp_driver [seconds per measurement, default 0.5]
 */
#define _POSIX_C_SOURCE 200809L

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HEADER 4
#define TAG 16
#define IVLEN 12
#define OVERHEAD (HEADER + 1 + TAG)
#define CONTENT_TYPE 23
#define BUFFER_BYTES (1u << 20)
#define MAX_PASSES 200000

static const size_t SIZES[] = {256, 1024, 16384};

static void die(const char *what)
{
    fprintf(stderr, "evp_driver: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        die("clock_gettime");
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void make_nonce(const uint8_t iv[IVLEN], uint64_t seq, uint8_t nonce[IVLEN])
{
    memcpy(nonce, iv, IVLEN);
    for (int i = 0; i < 8; i++)
        nonce[IVLEN - 1 - i] ^= (uint8_t)(seq >> (8 * i));
}

typedef struct {
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    uint8_t iv[IVLEN];
    size_t size;     /* content bytes per record */
    size_t records;  /* records per pass */
    uint8_t *src;    /* records * size content bytes */
    uint8_t *laid;   /* records * (size + 1): content || type per record */
    uint8_t *wire;   /* records * (size + OVERHEAD) */
    uint8_t *opened; /* records * size + 1 */
} bench;

/* Seal src as records into wire, as nt_seal does (two updates per record). */
static void seal_pass(bench *b)
{
    uint8_t nonce[IVLEN];
    const uint8_t type = CONTENT_TYPE;
    size_t body = b->size + 1 + TAG;
    uint8_t *hdr = b->wire;
    int n;

    for (size_t r = 0; r < b->records; r++) {
        const uint8_t *in = b->src + r * b->size;
        uint8_t *ct = hdr + HEADER;
        hdr[0] = 0x17;
        hdr[1] = (uint8_t)(body >> 16);
        hdr[2] = (uint8_t)(body >> 8);
        hdr[3] = (uint8_t)body;
        make_nonce(b->iv, r, nonce);
        if (EVP_CipherInit_ex(b->enc, NULL, NULL, NULL, nonce, 1) <= 0
            || EVP_CipherUpdate(b->enc, NULL, &n, hdr, HEADER) <= 0
            || EVP_CipherUpdate(b->enc, ct, &n, in, (int)b->size) <= 0
            || EVP_CipherUpdate(b->enc, ct + b->size, &n, &type, 1) <= 0
            || EVP_CipherFinal_ex(b->enc, ct + b->size + 1, &n) <= 0
            || EVP_CIPHER_CTX_ctrl(b->enc, EVP_CTRL_AEAD_GET_TAG, TAG, ct + b->size + 1) <= 0)
            die("seal");
        hdr += HEADER + body;
    }
}

/* The same, but content || type is already contiguous: one update. */
static void seal_pass_one_update(bench *b)
{
    uint8_t nonce[IVLEN];
    size_t body = b->size + 1 + TAG;
    uint8_t *hdr = b->wire;
    int n;

    for (size_t r = 0; r < b->records; r++) {
        const uint8_t *in = b->laid + r * (b->size + 1);
        uint8_t *ct = hdr + HEADER;
        hdr[0] = 0x17;
        hdr[1] = (uint8_t)(body >> 16);
        hdr[2] = (uint8_t)(body >> 8);
        hdr[3] = (uint8_t)body;
        make_nonce(b->iv, r, nonce);
        if (EVP_CipherInit_ex(b->enc, NULL, NULL, NULL, nonce, 1) <= 0
            || EVP_CipherUpdate(b->enc, NULL, &n, hdr, HEADER) <= 0
            || EVP_CipherUpdate(b->enc, ct, &n, in, (int)b->size + 1) <= 0
            || EVP_CipherFinal_ex(b->enc, ct + b->size + 1, &n) <= 0
            || EVP_CIPHER_CTX_ctrl(b->enc, EVP_CTRL_AEAD_GET_TAG, TAG, ct + b->size + 1) <= 0)
            die("seal (one update)");
        hdr += HEADER + body;
    }
}

/* Open every record of wire, packing the contents into opened (as nt_open
 * does with an output buffer: the type byte lands where the next content
 * starts). */
static void open_pass(bench *b)
{
    uint8_t nonce[IVLEN];
    uint8_t *hdr = b->wire;
    size_t outpos = 0;
    int n;

    for (size_t r = 0; r < b->records; r++) {
        size_t body = ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
        size_t ctlen = body - TAG;
        uint8_t *dst = b->opened + outpos;
        if (hdr[0] != 0x17 || body != b->size + 1 + TAG)
            die("open (header)");
        make_nonce(b->iv, r, nonce);
        if (EVP_CipherInit_ex(b->dec, NULL, NULL, NULL, nonce, 0) <= 0
            || EVP_CipherUpdate(b->dec, NULL, &n, hdr, HEADER) <= 0
            || EVP_CipherUpdate(b->dec, dst, &n, hdr + HEADER, (int)ctlen) <= 0
            || EVP_CIPHER_CTX_ctrl(b->dec, EVP_CTRL_AEAD_SET_TAG, TAG, hdr + HEADER + ctlen) <= 0
            || EVP_CipherFinal_ex(b->dec, dst + ctlen, &n) <= 0)
            die("open (tag)");
        if (dst[ctlen - 1] != CONTENT_TYPE)
            die("open (inner type)");
        outpos += ctlen - 1;
        hdr += HEADER + body;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Content bytes per second: median and best over passes run for `seconds`. */
static void measure(void (*pass)(bench *), bench *b, double seconds, double *median,
                    double *best)
{
    static double times[MAX_PASSES];
    size_t count = 0;
    double start, end, bytes = (double)(b->records * b->size);

    pass(b); /* warm up */
    start = now();
    end = start;
    while (count < MAX_PASSES && (end - start < seconds || count < 5)) {
        double t0 = end;
        pass(b);
        end = now();
        times[count++] = end - t0;
    }
    qsort(times, count, sizeof(times[0]), cmp_double);
    *median = bytes / times[count / 2];
    *best = bytes / times[0];
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        die("malloc");
    return p;
}

int main(int argc, char **argv)
{
    uint8_t key[32];
    double seconds = 0.5;
    EVP_CIPHER *aes;

    if (argc > 2) {
        fprintf(stderr, "usage: %s [seconds per measurement]\n", argv[0]);
        return 2;
    }
    if (argc == 2) {
        char *end;
        seconds = strtod(argv[1], &end);
        if (*end != '\0' || !(seconds > 0.0 && seconds <= 60.0)) {
            fprintf(stderr, "evp_driver: bad seconds %s\n", argv[1]);
            return 2;
        }
    }
    if ((aes = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL)) == NULL)
        die("EVP_CIPHER_fetch");

    printf("{\"openssl\": \"%s\", \"cipher\": \"AES-256-GCM\", \"buffer_bytes\": %u, "
           "\"seconds\": %g, \"results\": [",
           OpenSSL_version(OPENSSL_VERSION), BUFFER_BYTES, seconds);
    for (size_t i = 0; i < sizeof(SIZES) / sizeof(SIZES[0]); i++) {
        bench b;
        double seal_med, seal_best, one_med, one_best, open_med, open_best;

        memset(&b, 0, sizeof(b));
        b.size = SIZES[i];
        b.records = BUFFER_BYTES / b.size;
        b.src = xmalloc(b.records * b.size);
        b.laid = xmalloc(b.records * (b.size + 1));
        b.wire = xmalloc(b.records * (b.size + OVERHEAD));
        b.opened = xmalloc(b.records * b.size + 1);
        if (RAND_bytes(key, sizeof(key)) <= 0 || RAND_bytes(b.iv, IVLEN) <= 0
            || RAND_bytes(b.src, (int)(b.records * b.size)) <= 0)
            die("RAND_bytes");
        for (size_t r = 0; r < b.records; r++) {
            memcpy(b.laid + r * (b.size + 1), b.src + r * b.size, b.size);
            b.laid[r * (b.size + 1) + b.size] = CONTENT_TYPE;
        }
        if ((b.enc = EVP_CIPHER_CTX_new()) == NULL || (b.dec = EVP_CIPHER_CTX_new()) == NULL)
            die("EVP_CIPHER_CTX_new");
        if (EVP_CipherInit_ex(b.enc, aes, NULL, key, NULL, 1) <= 0
            || EVP_CipherInit_ex(b.dec, aes, NULL, key, NULL, 0) <= 0)
            die("EVP_CipherInit_ex");

        /* Check the round trip once before timing anything. */
        seal_pass(&b);
        open_pass(&b);
        if (memcmp(b.opened, b.src, b.records * b.size) != 0)
            die("round trip");

        measure(seal_pass, &b, seconds, &seal_med, &seal_best);
        measure(seal_pass_one_update, &b, seconds, &one_med, &one_best);
        measure(open_pass, &b, seconds, &open_med, &open_best);

        printf("%s\n  {\"size\": %zu, \"records\": %zu, \"seal_bytes_per_s\": %.0f, "
               "\"seal_best_bytes_per_s\": %.0f, \"seal_one_update_bytes_per_s\": %.0f, "
               "\"seal_one_update_best_bytes_per_s\": %.0f, \"open_bytes_per_s\": %.0f, "
               "\"open_best_bytes_per_s\": %.0f}",
               i == 0 ? "" : ",", b.size, b.records, seal_med, seal_best, one_med, one_best,
               open_med, open_best);

        EVP_CIPHER_CTX_free(b.enc);
        EVP_CIPHER_CTX_free(b.dec);
        free(b.src);
        free(b.laid);
        free(b.wire);
        free(b.opened);
    }
    printf("\n]}\n");
    EVP_CIPHER_free(aes);
    return 0;
}
