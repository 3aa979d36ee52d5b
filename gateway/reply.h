/*
 * reply.h - responses that Breakwater makes itself (SPEC section 3).
 *
 * Every such response is JSON: {"error":CODE,"message":TEXT,"request_id":ID,...}, with
 * Content-Type application/json, Cache-Control no-store, and, for a refusal, the header
 * X-Breakwater-Reason naming the layer that refused. X-Request-Id is added by the caller (it is
 * on every response, not only ours).
 */
#ifndef GW_REPLY_H
#define GW_REPLY_H

#include <h2o.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#define GW_REQUEST_ID_MAX 128

/* Writes `src` JSON-escaped (without quotes) into dst (always NUL-terminated, truncated to fit).
 * Returns the length written. */
size_t gw_json_escape(char *dst, size_t cap, const char *src, size_t len);

/* The standard reason phrase for the statuses Breakwater itself sends. */
const char *gw_status_reason(int status);

/* True when an inbound X-Request-Id can be used as is: 1..GW_REQUEST_ID_MAX visible ASCII
 * characters other than '"' and '\\' (so it is safe in JSON, logs and headers). */
int gw_request_id_valid(const char *s, size_t len);

/*
 * Sends `body` as the whole response and ends the request: `status` with its reason phrase,
 * Content-Type `content_type` (a string that outlives the request, e.g. a literal),
 * Cache-Control: no-store when `no_store`, X-Breakwater-Reason: `reason` unless it is NULL, and
 * a Content-Length (h2o_send_inline leaves it unset, and HTTP/1.1 clients then get Connection:
 * close). `body` must stay valid until the request is disposed (in req->pool, or static). Used by
 * the refusals on the public listener (gw_reply_error, with the reason header) and by every admin
 * API answer (JSON with no-store; /metrics as Prometheus text without it).
 */
void gw_reply_send(h2o_req_t *req, int status, const char *content_type, bool no_store,
                   const char *reason, h2o_iovec_t body);

/*
 * Sends a Breakwater error response and ends the request.
 *   reason: X-Breakwater-Reason value, or NULL for no header (handler faults)
 *   extra:  further JSON members to append, already formatted and starting with ',', or NULL
 *   fmt:    printf format for the human message (escaped here)
 */
void gw_reply_verror(h2o_req_t *req, int status, const char *code, const char *reason,
                     const char *request_id, const char *extra, const char *fmt, va_list ap);
void gw_reply_error(h2o_req_t *req, int status, const char *code, const char *reason,
                    const char *request_id, const char *extra, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

#endif
