/*
 * acklink.c - signed ack-link tokens. See acklink.h.
 */
#include "acklink.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#define SIG_BYTES 16

static uint8_t process_secret[AL_ACK_SECRET_LEN];
static int process_secret_set;

static void to_hex(const uint8_t *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int from_hex(const char *in, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = in[2 * i + k];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0)
                return -1;
            v = v * 16 + d;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

int al_ack_secret_load(al_db_t *db, uint8_t secret[AL_ACK_SECRET_LEN])
{
    sqlite3 *h = al_db_handle(db);
    sqlite3_stmt *st = NULL;
    int rc =
        sqlite3_prepare_v2(h, "SELECT value FROM meta WHERE key = 'ack_secret'", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return al_db_translate(rc);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        int ok = v != NULL && strlen(v) == 2 * AL_ACK_SECRET_LEN &&
                 from_hex(v, AL_ACK_SECRET_LEN, secret) == 0;
        sqlite3_finalize(st);
        return ok ? 0 : AL_DB_ECORRUPT;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return al_db_translate(rc);
    if (getrandom(secret, AL_ACK_SECRET_LEN, 0) != AL_ACK_SECRET_LEN)
        return AL_DB_EIO;
    char hex[2 * AL_ACK_SECRET_LEN + 1];
    to_hex(secret, AL_ACK_SECRET_LEN, hex);
    rc = sqlite3_prepare_v2(h, "INSERT INTO meta (key, value) VALUES ('ack_secret', ?1)", -1, &st,
                            NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, hex, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : al_db_translate(rc);
}

static void sign(const uint8_t secret[AL_ACK_SECRET_LEN], const char *msg, size_t len,
                 uint8_t out[SIG_BYTES])
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, AL_ACK_SECRET_LEN, (const unsigned char *)msg, len, mac, &maclen);
    memcpy(out, mac, SIG_BYTES);
}

int al_ack_token_make(const uint8_t secret[AL_ACK_SECRET_LEN], int64_t alert_id, uint64_t expiry_s,
                      char *out, size_t cap)
{
    char msg[48];
    int n =
        snprintf(msg, sizeof(msg), "%lld.%llu", (long long)alert_id, (unsigned long long)expiry_s);
    if (n < 0 || (size_t)n + 1 + 2 * SIG_BYTES + 1 > cap)
        return -1;
    uint8_t sig[SIG_BYTES];
    sign(secret, msg, (size_t)n, sig);
    memcpy(out, msg, (size_t)n);
    out[n] = '.';
    to_hex(sig, SIG_BYTES, out + n + 1);
    return n + 1 + 2 * SIG_BYTES;
}

int al_ack_token_verify(const uint8_t secret[AL_ACK_SECRET_LEN], const char *token, size_t len,
                        uint64_t now_s, int64_t *alert_id)
{
    /* "<id>.<expiry>.<32 hex>": split at the last dot */
    if (len < 2 * SIG_BYTES + 4 || len >= AL_ACK_TOKEN_MAX)
        return -EINVAL;
    size_t msg_len = len - 2 * SIG_BYTES - 1;
    if (token[msg_len] != '.')
        return -EINVAL;
    uint8_t given[SIG_BYTES], want[SIG_BYTES];
    if (from_hex(token + msg_len + 1, SIG_BYTES, given) != 0)
        return -EINVAL;
    sign(secret, token, msg_len, want);
    if (CRYPTO_memcmp(given, want, SIG_BYTES) != 0)
        return -EINVAL;
    long long id = 0;
    unsigned long long expiry = 0;
    char tail;
    char msg[AL_ACK_TOKEN_MAX];
    memcpy(msg, token, msg_len);
    msg[msg_len] = '\0';
    if (sscanf(msg, "%lld.%llu%c", &id, &expiry, &tail) != 2 || id <= 0)
        return -EINVAL;
    if (now_s > expiry)
        return -ETIMEDOUT;
    *alert_id = id;
    return 0;
}

void al_ack_set_secret(const uint8_t secret[AL_ACK_SECRET_LEN])
{
    memcpy(process_secret, secret, AL_ACK_SECRET_LEN);
    process_secret_set = 1;
}

size_t al_ack_link(const char *external_url, int64_t alert_id, uint64_t now_s, char *buf,
                   size_t cap)
{
    if (external_url == NULL || external_url[0] == '\0' || !process_secret_set)
        return 0;
    char token[AL_ACK_TOKEN_MAX];
    if (al_ack_token_make(process_secret, alert_id, now_s + AL_ACK_TTL_S, token, sizeof(token)) < 0)
        return 0;
    size_t ulen = strlen(external_url);
    while (ulen > 0 && external_url[ulen - 1] == '/')
        ulen--;
    int n = snprintf(buf, cap, "%.*s/ack/%s", (int)ulen, external_url, token);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
