/*
 * query.h - reading a request's query-string and form-body parameters (admin API, ack links).
 *
 * Values are returned as they appear (no percent-decoding: every parameter Breakwater reads is a
 * number or a plain word). The first occurrence of a name wins.
 */
#ifndef GW_QUERY_H
#define GW_QUERY_H

#include <h2o.h>
#include <stddef.h>
#include <stdint.h>

/* Copies parameter `name` into out (NUL-terminated). Returns 1 when found, 0 when absent, -1
 * when present but longer than cap - 1 (out is then empty). */
int gw_query_param(h2o_req_t *req, const char *name, char *out, size_t cap);

/* The same for an application/x-www-form-urlencoded request body (0 when the body is not one;
 * h2o has buffered the whole body before a handler runs). */
int gw_form_param(h2o_req_t *req, const char *name, char *out, size_t cap);

/* An unsigned decimal parameter: `dflt` when absent, -1 when malformed (empty, not digits, or
 * more than 18 digits). */
int64_t gw_query_uint(h2o_req_t *req, const char *name, int64_t dflt);

#endif
