/*
 * channel_sign.c - the signing primitives the providers' signatures and auth headers are made of:
 * HMAC-SHA256 and SHA-256 (OpenSSL), standard base64 (EVP_EncodeBlock) and RFC 3986
 * percent-encoding.
 *
 * Who uses what: DingTalk signs the URL (&sign = percent-encoded base64 HMAC-SHA256 with the
 * secret as key), Feishu signs the body (sign = base64 HMAC-SHA256 with TS + "\n" + secret as key
 * over an empty message), Twilio takes HTTP basic auth (base64), Opsgenie an alias in the URL
 * path (percent-encoded), PagerDuty and Opsgenie a stable hash of an over-long dedup key.
 *
 * Secrets pass through here only as arguments; nothing is kept or logged. Pure: no I/O.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "channel_int.h"

int al_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                   unsigned char out[32])
{
    unsigned int n = 0;
    static const unsigned char none[1] = {0};

    /* HMAC() with a NULL key (keylen 0) or NULL message is fine in OpenSSL 3, but older builds
     * treat a NULL data pointer as "no input": pass a valid pointer either way. */
    if (HMAC(EVP_sha256(), keylen > 0 ? key : none, (int)keylen,
             msglen > 0 ? (const unsigned char *)msg : none, msglen, out, &n) == NULL ||
        n != 32)
        return -1;
    return 0;
}

size_t al_base64(const unsigned char *in, size_t n, char *out)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

bool al_url_escape(al_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    bool ok = true;

    for (const unsigned char *p = (const unsigned char *)s; ok && *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            ok = al_buf_add(b, (const char *)p, 1);
        } else {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            ok = al_buf_add(b, esc, 3);
        }
    }
    return ok;
}

void al_sha256_hex(const char *s, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)s, strlen(s), md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void al_stable_key(const char *key, size_t max, char *out)
{
    size_t n = strlen(key);

    if (n <= max) {
        memcpy(out, key, n + 1);
        return;
    }
    memcpy(out, "sha256:", 7);
    al_sha256_hex(key, out + 7);
}
