/*
 * acklink.h - signed, expiring acknowledgement links (GET /ack/TOKEN on the public listener).
 *
 * Chat, email and phone messages carry `EXTERNAL_URL/ack/TOKEN`. The token names an alert and
 * an expiry and is signed with HMAC-SHA256 under a per-installation secret, so anyone holding the
 * link (the on-call person) can acknowledge that one alert until it expires, and nobody can forge
 * a link for another alert or extend one.
 *
 *   TOKEN = <alert id, decimal> "." <expiry, unix seconds> "." <first 16 bytes of
 *           HMAC-SHA256(secret, "<alert id>.<expiry>"), lower-case hex>
 *
 * The secret is 32 random bytes kept in the database's meta table (so links survive restarts)
 * and shared with the workers through memory the supervisor maps before forking. Verification is
 * pure and constant-time in the signature.
 */
#ifndef AL_ACKLINK_H
#define AL_ACKLINK_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"

#define AL_ACK_SECRET_LEN 32
#define AL_ACK_TOKEN_MAX 80      /* bytes of a token, NUL included */
#define AL_ACK_TTL_S (24 * 3600) /* a link is valid this long after the message is built */

/* Reads the installation's ack secret from the meta table, creating it on first use. Returns 0
 * or an AL_DB_E* code. Blocking SQLite I/O: start-up only. */
int al_ack_secret_load(al_db_t *db, uint8_t secret[AL_ACK_SECRET_LEN]);

/* Writes the token for `alert_id` expiring at `expiry_s` into out (NUL-terminated). Returns its
 * length, or -1 when cap is too small. */
int al_ack_token_make(const uint8_t secret[AL_ACK_SECRET_LEN], int64_t alert_id, uint64_t expiry_s,
                      char *out, size_t cap);

/* Checks a token at time now_s. Returns 0 and sets *alert_id when it is genuine and not expired;
 * -EINVAL when malformed or forged; -ETIMEDOUT when genuine but expired. */
int al_ack_token_verify(const uint8_t secret[AL_ACK_SECRET_LEN], const char *token, size_t len,
                        uint64_t now_s, int64_t *alert_id);

/* The process's secret for building links in messages (set once by the control process before
 * the sender starts; NULL: no links). */
void al_ack_set_secret(const uint8_t secret[AL_ACK_SECRET_LEN]);

/* Builds "EXTERNAL_URL/ack/TOKEN" for a message about `alert_id` sent now (unix seconds now_s).
 * Returns the length, or 0 when links are unavailable (no external_url or no secret) or cap is
 * too small. */
size_t al_ack_link(const char *external_url, int64_t alert_id, uint64_t now_s, char *buf,
                   size_t cap);

#endif
