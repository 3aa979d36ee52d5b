/*
 * reply.c - Breakwater's own JSON responses. See reply.h.
 *
 * Built with snprintf into the request's memory pool rather than with a JSON library: this runs
 * for every refusal, and refusals come in floods (an open breaker answers thousands per second),
 * so it must stay a few hundred nanoseconds. Every string that is not a constant of ours goes
 * through gw_json_escape.
 */
#include "reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t gw_json_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        char esc[7];
        size_t n = 0;
        if (ch == '"' || ch == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            esc[n++] = '\\';
            esc[n++] = 'u';
            esc[n++] = '0';
            esc[n++] = '0';
            esc[n++] = hex[ch >> 4];
            esc[n++] = hex[ch & 15];
        } else {
            esc[n++] = (char)ch;
        }
        if (o + n >= cap)
            break;
        memcpy(dst + o, esc, n);
        o += n;
    }
    dst[o] = '\0';
    return o;
}

const char *gw_status_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 400 ? "OK" : (status < 500 ? "Client Error" : "Server Error");
    }
}

int gw_request_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > GW_REQUEST_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e || ch == '"' || ch == '\\')
            return 0;
    }
    return 1;
}

void gw_reply_error(h2o_req_t *req, int status, const char *code, const char *reason,
                    const char *request_id, const char *extra, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gw_reply_verror(req, status, code, reason, request_id, extra, fmt, ap);
    va_end(ap);
}

void gw_reply_verror(h2o_req_t *req, int status, const char *code, const char *reason,
                     const char *request_id, const char *extra, const char *fmt, va_list ap)
{
    char msg[512], msg_esc[1024];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0)
        msg[0] = '\0';
    gw_json_escape(msg_esc, sizeof(msg_esc), msg, strlen(msg));

    size_t cap = 128 + strlen(code) + strlen(msg_esc) + strlen(request_id) +
                 (extra != NULL ? strlen(extra) : 0);
    char *body = h2o_mem_alloc_pool(&req->pool, cap);
    int len = snprintf(body, cap, "{\"error\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"%s}\n",
                       code, msg_esc, request_id, extra != NULL ? extra : "");

    gw_reply_send(req, status, "application/json", true, reason, h2o_iovec_init(body, (size_t)len));
}

void gw_reply_send(h2o_req_t *req, int status, const char *content_type, bool no_store,
                   const char *reason, h2o_iovec_t body)
{
    req->res.status = status;
    req->res.reason = gw_status_reason(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                   strlen(content_type));
    if (no_store)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                       H2O_STRLIT("no-store"));
    if (reason != NULL)
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-breakwater-reason"), 0,
                              NULL, reason, strlen(reason));
    /* h2o_send_inline leaves the length unset; without it HTTP/1.1 clients get Connection: close */
    req->res.content_length = body.len;
    h2o_send_inline(req, body.base, body.len);
}
