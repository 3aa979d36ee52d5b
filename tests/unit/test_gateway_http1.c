/*
 * test_gateway_http1.c - unit tests for gateway/http1.c, the upstream response parser.
 *
 * Each framing rule of RFC 9112 6.3 as implemented there has a test named for the rule. Heads are
 * also fed split at every byte, and chunked bodies one byte at a time and in random splits (fixed
 * seed, so a failure reproduces), because the upstream client sees whatever split the socket
 * gives it. Inputs are copied into exactly-sized heap buffers where the split matters, so that
 * AddressSanitizer catches any read past what was offered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http1.h"

/* ---- helpers ---- */

/* Parses a complete NUL-terminated response head in one call. */
static int parse(const char *s, bool head_request, gw_h1_response_t *res)
{
    return gw_h1_parse_response(s, strlen(s), 0, head_request, res);
}

/* Parses `s`, asserts that it is a complete valid head and returns its body kind. */
static gw_h1_body_kind_t framing_of(const char *s, bool head_request, gw_h1_response_t *res)
{
    int r = parse(s, head_request, res);
    assert_int_equal(r, (int)strlen(s));
    return res->body;
}

static void assert_invalid(const char *s)
{
    gw_h1_response_t res;
    assert_int_equal(parse(s, false, &res), GW_H1_INVALID);
}

static bool header_is(const gw_h1_header_t *h, const char *name, const char *value)
{
    return h->name_len == strlen(name) && memcmp(h->name, name, h->name_len) == 0 &&
           h->value_len == strlen(value) && memcmp(h->value, value, h->value_len) == 0;
}

/* A small deterministic PRNG (xorshift32), so random splits are the same on every run. */
static uint32_t next_rand(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* Output of feeding a body decoder a sequence of segments. */
typedef struct decoded {
    char payload[4096];
    size_t payload_len;
    char extra[4096];
    size_t extra_len;
    int last_result;
} decoded_t;

/*
 * Feeds raw[0..len) to a fresh decoder in segments whose lengths come from `split` (called with
 * the bytes left; returns 1..left), each copied into its own exactly-sized buffer as a socket
 * read would be. Collects payload and extra bytes; stops at the first GW_H1_INVALID.
 */
static void feed(gw_h1_body_kind_t kind, uint64_t content_length, const char *raw, size_t len,
                 size_t (*split)(size_t left, uint32_t *state), uint32_t seed, decoded_t *out)
{
    gw_h1_response_t res = {.body = kind, .content_length = content_length};
    gw_h1_body_t b;
    uint32_t state = seed;

    memset(out, 0, sizeof(*out));
    gw_h1_body_init(&b, &res);
    for (size_t off = 0; off < len;) {
        size_t n = split(len - off, &state), extra = 12345;
        char *seg = malloc(n);
        assert_non_null(seg);
        memcpy(seg, raw + off, n);
        size_t dlen = n;
        int r = gw_h1_body_decode(&b, seg, &dlen, &extra);
        out->last_result = r;
        if (r == GW_H1_INVALID) {
            free(seg);
            return;
        }
        assert_true(dlen <= n);
        assert_true(dlen + extra <= n);
        assert_true(out->payload_len + dlen <= sizeof(out->payload));
        memcpy(out->payload + out->payload_len, seg, dlen);
        out->payload_len += dlen;
        if (r == 1) {
            assert_true(out->extra_len + extra <= sizeof(out->extra));
            memcpy(out->extra + out->extra_len, seg + dlen, extra);
            out->extra_len += extra;
        } else {
            assert_int_equal(r, 0);
            assert_int_equal(extra, 0);
        }
        free(seg);
        off += n;
    }
}

static size_t split_whole(size_t left, uint32_t *state)
{
    (void)state;
    return left;
}

static size_t split_one(size_t left, uint32_t *state)
{
    (void)left;
    (void)state;
    return 1;
}

static size_t split_random(size_t left, uint32_t *state)
{
    size_t n = 1 + next_rand(state) % 9;
    return n < left ? n : left;
}

/* Decodes `raw` as one chunked body in a single call; returns the result. */
static int decode_chunked_once(const char *raw, decoded_t *out)
{
    feed(GW_H1_BODY_CHUNKED, 0, raw, strlen(raw), split_whole, 1, out);
    return out->last_result;
}

/* ---- status line and header syntax ---- */

static void parses_status_line_and_headers_into_caller_buffer(void **state)
{
    static const char s[] = "HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 5\r\n\r\nhello";
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(parse(s, false, &res), (int)strlen(s) - 5);
    assert_int_equal(res.minor_version, 1);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.reason_len, 2);
    assert_memory_equal(res.reason, "OK", 2);
    assert_int_equal(res.nheaders, 2);
    assert_true(header_is(&res.headers[0], "Server", "t"));
    assert_true(header_is(&res.headers[1], "Content-Length", "5"));
    assert_true(res.headers[0].name >= s && res.headers[0].name < s + sizeof(s));
    assert_int_equal(res.body, GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 5);
    assert_true(res.keep_alive);
}

/* Offers prefixes of increasing length, passing prev_len as the client would. The head must be
 * reported incomplete for every proper prefix and complete, with the same result, at the end. */
static void check_split_at_every_byte(const char *s, int head_len)
{
    size_t n = strlen(s);
    size_t prev = 0;
    gw_h1_response_t res;

    for (size_t k = 1; k <= n; k++) {
        char *buf = malloc(k);
        assert_non_null(buf);
        memcpy(buf, s, k);
        int r = gw_h1_parse_response(buf, k, prev, false, &res);
        if (k < (size_t)head_len) {
            assert_int_equal(r, GW_H1_INCOMPLETE);
            prev = k;
        } else {
            assert_int_equal(r, head_len);
            assert_int_equal(res.status, 200);
            assert_int_equal(res.nheaders, 2);
            assert_int_equal(res.body, GW_H1_BODY_LENGTH);
            assert_int_equal(res.content_length, 3);
            free(buf);
            break;
        }
        free(buf);
    }
    /* Two reads split at every point: the second call sees the whole head with prev_len = k. */
    for (size_t k = 1; k < (size_t)head_len; k++) {
        assert_int_equal(gw_h1_parse_response(s, k, 0, false, &res), GW_H1_INCOMPLETE);
        assert_int_equal(gw_h1_parse_response(s, n, k, false, &res), head_len);
        assert_int_equal(res.content_length, 3);
    }
}

static void head_split_at_every_byte_is_incomplete_until_the_blank_line(void **state)
{
    static const char crlf[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
    static const char lf[] = "HTTP/1.1 200 OK\nContent-Length: 3\nX-A: b\n\nabc";
    (void)state;
    check_split_at_every_byte(crlf, (int)strlen(crlf) - 3);
    check_split_at_every_byte(lf, (int)strlen(lf) - 3);
}

static void prev_len_beyond_len_is_ignored_not_overread(void **state)
{
    static const char s[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    gw_h1_response_t res;
    (void)state;
    /* Exactly-sized heap copies: picohttpparser would start scanning at prev_len - 3. */
    for (size_t k = 10; k <= strlen(s); k += strlen(s) - 10) {
        char *buf = malloc(k);
        assert_non_null(buf);
        memcpy(buf, s, k);
        int want = k < strlen(s) ? GW_H1_INCOMPLETE : (int)k;
        assert_int_equal(gw_h1_parse_response(buf, k, k + 4, false, &res), want);
        assert_int_equal(gw_h1_parse_response(buf, k, k + 500, false, &res), want);
        free(buf);
    }
}

static void status_101_is_invalid(void **state)
{
    (void)state;
    assert_invalid("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: upgrade\r\n\r\n");
}

static void status_outside_100_to_599_is_invalid(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_invalid("HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 20 Short\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 2000 Long\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(framing_of("HTTP/1.1 599 Edge\r\nContent-Length: 0\r\n\r\n", false, &res),
                     GW_H1_BODY_NONE);
}

static void status_line_needs_space_after_code_but_reason_may_be_empty(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_invalid("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(framing_of("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", false, &res),
                     GW_H1_BODY_NONE);
    assert_int_equal(res.reason_len, 0);
}

static void minor_version_above_1_is_read_as_http_1_1_and_http_2_is_invalid(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.2 200 OK\r\nContent-Length: 1\r\n\r\n", false, &res),
                     GW_H1_BODY_LENGTH);
    assert_int_equal(res.minor_version, 1);
    assert_true(res.keep_alive);
    assert_invalid("HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.x 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("ICY 200 OK\r\nContent-Length: 0\r\n\r\n");
}

static void obs_fold_continuation_line_is_invalid(void **state)
{
    (void)state;
    assert_invalid("HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nX-A: one\r\n\ttwo\r\nContent-Length: 0\r\n\r\n");
    /* A "continuation" of nothing (first header line) is a bad header name. */
    assert_invalid("HTTP/1.1 200 OK\r\n X-A: one\r\nContent-Length: 0\r\n\r\n");
}

static void header_value_with_nul_cr_or_del_is_invalid(void **state)
{
    static const char nul[] = "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n";
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(gw_h1_parse_response(nul, sizeof(nul) - 1, 0, false, &res), GW_H1_INVALID);
    assert_invalid("HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nX-A: a\x7f"
                   "b\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nX-A: a\x01"
                   "b\r\nContent-Length: 0\r\n\r\n");
}

static void bare_lf_ends_a_header_line_so_no_value_contains_lf(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 0\r\n\r\n", false, &res),
        GW_H1_BODY_NONE);
    assert_int_equal(res.nheaders, 3);
    assert_true(header_is(&res.headers[0], "X-A", "a"));
    assert_true(header_is(&res.headers[1], "X-B", "b"));
    for (size_t i = 0; i < res.nheaders; i++) {
        assert_null(memchr(res.headers[i].value, '\n', res.headers[i].value_len));
        assert_null(memchr(res.headers[i].value, '\r', res.headers[i].value_len));
    }
}

static void header_name_that_is_not_a_token_is_invalid(void **state)
{
    (void)state;
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello");
    assert_invalid("HTTP/1.1 200 OK\r\nX(A): b\r\nContent-Length: 0\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\n: b\r\nContent-Length: 0\r\n\r\n");
}

/* A head with `n` headers "X-<i>: v". */
static char *head_with_headers(size_t n)
{
    size_t cap = 64 + n * 16;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t off = (size_t)snprintf(s, cap, "HTTP/1.1 204 No Content\r\n");
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, "X-%zu: v\r\n", i);
    snprintf(s + off, cap - off, "\r\n");
    return s;
}

static void more_than_max_headers_is_invalid(void **state)
{
    gw_h1_response_t res;
    (void)state;
    char *ok = head_with_headers(GW_H1_MAX_HEADERS);
    char *over = head_with_headers(GW_H1_MAX_HEADERS + 1);
    assert_int_equal(parse(ok, false, &res), (int)strlen(ok));
    assert_int_equal(res.nheaders, GW_H1_MAX_HEADERS);
    assert_true(header_is(&res.headers[GW_H1_MAX_HEADERS - 1], "X-99", "v"));
    assert_int_equal(parse(over, false, &res), GW_H1_INVALID);
    free(ok);
    free(over);
}

/* ---- framing: no body ---- */

static void head_response_with_content_length_1000_has_no_body(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", true, &res),
                     GW_H1_BODY_NONE);
    assert_true(res.keep_alive);
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, &res),
        GW_H1_BODY_NONE);
}

static void status_1xx_204_and_304_have_no_body_despite_content_length(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 100 Continue\r\n\r\n", false, &res), GW_H1_BODY_NONE);
    assert_int_equal(
        framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", false, &res),
        GW_H1_BODY_NONE);
    assert_true(res.keep_alive);
    assert_int_equal(
        framing_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, &res),
        GW_H1_BODY_NONE);
    assert_true(res.keep_alive);
    /* No framing header at all would mean "until close" for a 200, but not for these. */
    assert_int_equal(framing_of("HTTP/1.1 304 Not Modified\r\n\r\n", false, &res), GW_H1_BODY_NONE);
    assert_true(res.keep_alive);
}

static void content_length_zero_has_no_body_and_keeps_connection(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, &res),
                     GW_H1_BODY_NONE);
    assert_true(res.keep_alive);
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_NONE);
    assert_false(res.keep_alive);
}

/* ---- framing: Transfer-Encoding ---- */

static void transfer_encoding_ending_in_chunked_is_chunked(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, &res),
        GW_H1_BODY_CHUNKED);
    assert_true(res.keep_alive);
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, CHUNKED  \r\n\r\n", false, &res),
        GW_H1_BODY_CHUNKED);
    assert_true(res.keep_alive);
    /* Codings accumulate across fields in order; empty list elements are skipped. */
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,,\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_CHUNKED);
}

static void transfer_encoding_not_ending_in_chunked_runs_to_close(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, &res),
                     GW_H1_BODY_CLOSE);
    assert_false(res.keep_alive);
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false, &res),
        GW_H1_BODY_CLOSE);
    assert_false(res.keep_alive);
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                "Transfer-Encoding: gzip\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_CLOSE);
    /* "chunkedx" and a near miss are other codings, not chunked. */
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunkedx\r\n\r\n", false, &res),
        GW_H1_BODY_CLOSE);
    /* Transfer-Encoding overrides Content-Length here too. */
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n"
                                "Content-Length: 5\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_CLOSE);
    assert_false(res.keep_alive);
}

static void transfer_encoding_chunked_twice_empty_or_quoted_is_invalid(void **state)
{
    (void)state;
    assert_invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: , ,\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: ;q=1\r\n\r\n");
    /* A quoted parameter could hide a comma: "gzip" would be read as followed by "chunked". */
    assert_invalid("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;x=\"a,chunked;y=\"\r\n\r\n");
}

static void content_length_with_chunked_is_chunked_without_keep_alive(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_CHUNKED);
    assert_false(res.keep_alive);
    /* Order does not matter, and an invalid-looking pair still is not reused. */
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                "Content-Length: 0\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_CHUNKED);
    assert_false(res.keep_alive);
}

static void http_1_0_with_transfer_encoding_is_never_reused(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_CHUNKED);
    assert_false(res.keep_alive);
}

/* ---- framing: Content-Length ---- */

static void content_length_gives_length_body(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", false, &res),
                     GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 42);
    assert_true(res.keep_alive);
    /* Leading and trailing whitespace around the value is OWS. */
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\ncontent-length:\t 7 \t\r\n\r\n", false, &res),
                     GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 7);
}

static void content_length_must_be_digits_only(void **state)
{
    static const char *const bad[] = {"+5",  "-5", "5a", "0x5", "5 5",
                                      "1e3", "",   " ",  "5.0", "\xef\xbc\x95"};
    char s[128];
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(s, sizeof(s), "HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n", bad[i]);
        assert_invalid(s);
    }
}

static void content_length_up_to_int64_max_is_accepted_and_above_is_invalid(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n", false, &res),
        GW_H1_BODY_LENGTH);
    assert_true(res.content_length == (uint64_t)INT64_MAX);
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    /* Leading zeros do not count towards the limit. */
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 000000000000000000000012\r\n"
                                "\r\n",
                                false, &res),
                     GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 12);
}

static void repeated_identical_content_lengths_are_accepted(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                                false, &res),
                     GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 5);
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5, 5,5\r\n\r\n", false, &res),
                     GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 5);
    assert_int_equal(
        framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n", false,
                   &res),
        GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 5);
}

static void differing_content_lengths_are_invalid(void **state)
{
    (void)state;
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n");
    assert_invalid("HTTP/1.1 200 OK\r\nContent-Length: ,5\r\n\r\n");
    /* Validated even where the length is not used. */
    assert_invalid("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
}

static void no_length_and_no_transfer_encoding_runs_to_close(void **state)
{
    gw_h1_response_t res;
    (void)state;
    assert_int_equal(framing_of("HTTP/1.1 200 OK\r\nServer: t\r\n\r\n", false, &res),
                     GW_H1_BODY_CLOSE);
    assert_false(res.keep_alive);
    assert_int_equal(framing_of("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", false, &res),
                     GW_H1_BODY_CLOSE);
    assert_false(res.keep_alive);
}

/* ---- keep-alive ---- */

static void http_1_1_keeps_alive_unless_connection_close(void **state)
{
    gw_h1_response_t res;
    (void)state;
    framing_of("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", false, &res);
    assert_true(res.keep_alive);
    framing_of("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", false, &res);
    assert_false(res.keep_alive);
    framing_of("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive , CLOSE\r\n\r\n",
               false, &res);
    assert_false(res.keep_alive);
    framing_of(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-a\r\nconnection: close\r\n\r\n",
        false, &res);
    assert_false(res.keep_alive);
    /* "closed" is another token, not "close". */
    framing_of("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: closed, x-close\r\n\r\n", false,
               &res);
    assert_true(res.keep_alive);
}

static void http_1_0_keeps_alive_only_with_connection_keep_alive(void **state)
{
    gw_h1_response_t res;
    (void)state;
    framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, &res);
    assert_int_equal(res.minor_version, 0);
    assert_false(res.keep_alive);
    framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n", false,
               &res);
    assert_true(res.keep_alive);
    framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, close\r\n\r\n",
               false, &res);
    assert_false(res.keep_alive);
    framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nKeep-Alive: timeout=5\r\n\r\n", false,
               &res);
    assert_false(res.keep_alive);
}

/* ---- interim responses ---- */

static void continue_100_then_200_in_one_buffer_parse_one_after_the_other(void **state)
{
    static const char s[] = "HTTP/1.1 100 Continue\r\n\r\n"
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    gw_h1_response_t res;
    (void)state;
    int r1 = gw_h1_parse_response(s, strlen(s), 0, false, &res);
    assert_int_equal(r1, (int)strlen("HTTP/1.1 100 Continue\r\n\r\n"));
    assert_int_equal(res.status, 100);
    assert_int_equal(res.body, GW_H1_BODY_NONE);
    int r2 = gw_h1_parse_response(s + r1, strlen(s) - (size_t)r1, 0, false, &res);
    assert_true(r2 > 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.body, GW_H1_BODY_LENGTH);
    assert_int_equal(res.content_length, 2);
    assert_memory_equal(s + r1 + r2, "ok", 2);
}

static void early_hints_103_then_200_keep_their_own_headers(void **state)
{
    static const char s[] = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    gw_h1_response_t res;
    (void)state;
    int r1 = gw_h1_parse_response(s, strlen(s), 0, false, &res);
    assert_true(r1 > 0);
    assert_int_equal(res.status, 103);
    assert_int_equal(res.body, GW_H1_BODY_NONE);
    assert_int_equal(res.nheaders, 1);
    assert_true(header_is(&res.headers[0], "Link", "</a.css>; rel=preload"));
    int r2 = gw_h1_parse_response(s + r1, strlen(s) - (size_t)r1, 0, false, &res);
    assert_true(r2 > 0);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.nheaders, 1);
    assert_int_equal(res.body, GW_H1_BODY_CHUNKED);
    assert_string_equal(s + r1 + r2, "0\r\n\r\n");
}

/* ---- body: length, none, close ---- */

static void length_body_never_passes_bytes_beyond_content_length(void **state)
{
    static const char raw[] = "helloHTTP/1.1 200 OK\r\n";
    decoded_t d;
    (void)state;
    feed(GW_H1_BODY_LENGTH, 5, raw, strlen(raw), split_whole, 1, &d);
    assert_int_equal(d.last_result, 1);
    assert_int_equal(d.payload_len, 5);
    assert_memory_equal(d.payload, "hello", 5);
    assert_int_equal(d.extra_len, strlen(raw) - 5);
    assert_memory_equal(d.extra, "HTTP/1.1", 8);
}

static void length_body_in_pieces_completes_on_the_last_byte(void **state)
{
    decoded_t d;
    (void)state;
    feed(GW_H1_BODY_LENGTH, 11, "hello world", 11, split_one, 1, &d);
    assert_int_equal(d.last_result, 1);
    assert_int_equal(d.payload_len, 11);
    assert_memory_equal(d.payload, "hello world", 11);
    assert_int_equal(d.extra_len, 0);
}

static void length_body_eof_before_the_end_is_truncation(void **state)
{
    gw_h1_response_t res = {.body = GW_H1_BODY_LENGTH, .content_length = 10};
    gw_h1_body_t b;
    char buf[] = "abc";
    size_t len = 3, extra;
    (void)state;
    gw_h1_body_init(&b, &res);
    assert_int_equal(gw_h1_body_eof(&b), 0);
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 0);
    assert_int_equal(len, 3);
    assert_int_equal(b.remaining, 7);
    assert_int_equal(gw_h1_body_eof(&b), 0);
}

static void none_body_is_complete_at_once_and_every_byte_is_extra(void **state)
{
    gw_h1_response_t res = {.body = GW_H1_BODY_NONE};
    gw_h1_body_t b;
    char buf[] = "junk";
    size_t len = 4, extra;
    (void)state;
    gw_h1_body_init(&b, &res);
    assert_int_equal(gw_h1_body_eof(&b), 1);
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 1);
    assert_int_equal(len, 0);
    assert_int_equal(extra, 4);
    len = 0;
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 1);
    assert_int_equal(extra, 0);
}

static void close_body_passes_everything_through_and_ends_only_at_eof(void **state)
{
    gw_h1_response_t res = {.body = GW_H1_BODY_CLOSE};
    gw_h1_body_t b;
    char buf[] = "0\r\n\r\nanything";
    size_t len = strlen(buf), extra = 99;
    (void)state;
    gw_h1_body_init(&b, &res);
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 0);
    assert_int_equal(len, strlen("0\r\n\r\nanything"));
    assert_string_equal(buf, "0\r\n\r\nanything");
    assert_int_equal(extra, 0);
    assert_int_equal(gw_h1_body_eof(&b), 1);
}

static void decode_after_completion_reports_every_byte_as_extra(void **state)
{
    gw_h1_response_t res = {.body = GW_H1_BODY_LENGTH, .content_length = 2};
    gw_h1_body_t b;
    char buf[] = "okmore";
    size_t len = 2, extra;
    (void)state;
    gw_h1_body_init(&b, &res);
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 1);
    assert_int_equal(extra, 0);
    assert_int_equal(gw_h1_body_eof(&b), 1);
    len = 4;
    assert_int_equal(gw_h1_body_decode(&b, buf + 2, &len, &extra), 1);
    assert_int_equal(len, 0);
    assert_int_equal(extra, 4);
}

/* ---- body: chunked ---- */

static const char chunked_raw[] = "5\r\nhello\r\n"
                                  "1;name=value;flag\r\n,\r\n"
                                  "A  ; ext=\"quoted\"\r\n world 123\r\n"
                                  "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                                  "0;last\r\n"
                                  "Trailer-A: 1\r\n"
                                  "Trailer-B: 2\r\n"
                                  "\r\n"
                                  "NEXT";
static const char chunked_payload[] = "hello, world 123abcdefghijklmnopqrstuvwxyz";

static void check_chunked_result(const decoded_t *d)
{
    assert_int_equal(d->last_result, 1);
    assert_int_equal(d->payload_len, strlen(chunked_payload));
    assert_memory_equal(d->payload, chunked_payload, d->payload_len);
    assert_int_equal(d->extra_len, 4);
    assert_memory_equal(d->extra, "NEXT", 4);
}

static void chunked_body_in_one_buffer_decodes_and_reports_extra(void **state)
{
    decoded_t d;
    (void)state;
    feed(GW_H1_BODY_CHUNKED, 0, chunked_raw, strlen(chunked_raw), split_whole, 1, &d);
    check_chunked_result(&d);
}

static void chunked_body_fed_one_byte_at_a_time_decodes_the_same_bytes(void **state)
{
    decoded_t d;
    (void)state;
    feed(GW_H1_BODY_CHUNKED, 0, chunked_raw, strlen(chunked_raw), split_one, 1, &d);
    check_chunked_result(&d);
}

static void chunked_body_in_random_splits_decodes_the_same_bytes(void **state)
{
    decoded_t d;
    (void)state;
    for (uint32_t seed = 1; seed <= 500; seed++) {
        feed(GW_H1_BODY_CHUNKED, 0, chunked_raw, strlen(chunked_raw), split_random,
             seed * 2654435761u, &d);
        check_chunked_result(&d);
    }
}

static void chunked_extra_bytes_sit_right_after_the_decoded_payload(void **state)
{
    gw_h1_response_t res = {.body = GW_H1_BODY_CHUNKED};
    gw_h1_body_t b;
    char buf[] = "3\r\nabc\r\n0\r\n\r\nHTTP/1.1";
    size_t len = strlen(buf), extra;
    (void)state;
    gw_h1_body_init(&b, &res);
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 1);
    assert_int_equal(len, 3);
    assert_int_equal(extra, 8);
    assert_memory_equal(buf, "abcHTTP/1.1", 11);
    assert_int_equal(gw_h1_body_eof(&b), 1);
}

static void chunked_trailers_are_consumed_not_reported_as_extra(void **state)
{
    decoded_t d;
    (void)state;
    assert_int_equal(decode_chunked_once("0\r\nX-Checksum: abc\r\nX-More: d\r\n\r\n", &d), 1);
    assert_int_equal(d.payload_len, 0);
    assert_int_equal(d.extra_len, 0);
    assert_int_equal(decode_chunked_once("2\r\nhi\r\n0\r\n\r\n", &d), 1);
    assert_int_equal(d.payload_len, 2);
    assert_int_equal(d.extra_len, 0);
}

static void chunked_extensions_are_ignored(void **state)
{
    decoded_t d;
    (void)state;
    assert_int_equal(decode_chunked_once("4;a=b;c\r\nabcd\r\n0;end=1\r\n\r\n", &d), 1);
    assert_int_equal(d.payload_len, 4);
    assert_memory_equal(d.payload, "abcd", 4);
}

static void chunk_size_with_bad_hex_is_invalid(void **state)
{
    decoded_t d;
    (void)state;
    assert_int_equal(decode_chunked_once("zz\r\nhello\r\n0\r\n\r\n", &d), GW_H1_INVALID);
    assert_int_equal(decode_chunked_once("-5\r\nhello\r\n0\r\n\r\n", &d), GW_H1_INVALID);
    assert_int_equal(decode_chunked_once(" 5\r\nhello\r\n0\r\n\r\n", &d), GW_H1_INVALID);
    assert_int_equal(decode_chunked_once("\r\nhello\r\n0\r\n\r\n", &d), GW_H1_INVALID);
    assert_int_equal(decode_chunked_once("5\r\nhello\r\nq\r\n\r\n", &d), GW_H1_INVALID);
}

static void chunk_data_not_followed_by_line_end_is_invalid(void **state)
{
    decoded_t d;
    (void)state;
    assert_int_equal(decode_chunked_once("5\r\nhelloX\r\n0\r\n\r\n", &d), GW_H1_INVALID);
}

static void chunk_size_overflow_is_invalid(void **state)
{
    decoded_t d;
    (void)state;
    /* 17 hex digits: more than a size_t holds. */
    assert_int_equal(decode_chunked_once("10000000000000000\r\n", &d), GW_H1_INVALID);
    /* Fits a size_t but not int64_t: also refused, like such a Content-Length. */
    assert_int_equal(decode_chunked_once("8000000000000000\r\n", &d), GW_H1_INVALID);
    assert_int_equal(decode_chunked_once("ffffffffffffffff\r\n", &d), GW_H1_INVALID);
    /* Refused before the line even ends, whichever split the digits arrive in. */
    feed(GW_H1_BODY_CHUNKED, 0, "ffffffffffffffff", 16, split_one, 1, &d);
    assert_int_equal(d.last_result, GW_H1_INVALID);
    /* INT64_MAX itself is a legal (if patient) chunk. */
    assert_int_equal(decode_chunked_once("7fffffffffffffff\r\nabc", &d), 0);
    assert_int_equal(d.payload_len, 3);
}

static void chunked_eof_before_the_last_chunk_is_truncation(void **state)
{
    gw_h1_response_t res = {.body = GW_H1_BODY_CHUNKED};
    gw_h1_body_t b;
    char buf[] = "5\r\nhel";
    size_t len = strlen(buf), extra;
    (void)state;
    gw_h1_body_init(&b, &res);
    assert_int_equal(gw_h1_body_decode(&b, buf, &len, &extra), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "hel", 3);
    assert_int_equal(gw_h1_body_eof(&b), 0);
}

static void head_then_body_from_one_read(void **state)
{
    char s[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    gw_h1_response_t res;
    gw_h1_body_t b;
    size_t extra;
    (void)state;
    int r = gw_h1_parse_response(s, strlen(s), 0, false, &res);
    assert_true(r > 0);
    gw_h1_body_init(&b, &res);
    size_t len = strlen(s) - (size_t)r;
    assert_int_equal(gw_h1_body_decode(&b, s + r, &len, &extra), 1);
    assert_int_equal(len, 3);
    assert_int_equal(extra, 0);
    assert_memory_equal(s + r, "abc", 3);
    assert_true(res.keep_alive);
}

/* ---- hop-by-hop helpers ---- */

static void hop_by_hop_headers_are_recognised_case_insensitively(void **state)
{
    static const char *const hop[] = {
        "connection",
        "Keep-Alive",
        "PROXY-CONNECTION",
        "te",
        "Trailer",
        "transfer-encoding",
        "upgrade",
        "Proxy-Authenticate",
        "proxy-authorization",
    };
    static const char *const end_to_end[] = {
        "content-length", "trailers", "t", "", "connectionx", "x-connection", "host", "tE ",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        assert_true(gw_h1_is_hop_by_hop(hop[i], strlen(hop[i])));
    for (size_t i = 0; i < sizeof(end_to_end) / sizeof(end_to_end[0]); i++)
        assert_false(gw_h1_is_hop_by_hop(end_to_end[i], strlen(end_to_end[i])));
    /* Only `len` bytes count. */
    assert_true(gw_h1_is_hop_by_hop("te-extra", 2));
}

static void connection_lists_finds_tokens_with_ows_case_insensitively(void **state)
{
    static const char v[] = "keep-alive, X-Foo ,\tBar\t,,";
    (void)state;
    assert_true(gw_h1_connection_lists(v, strlen(v), "x-foo", 5));
    assert_true(gw_h1_connection_lists(v, strlen(v), "BAR", 3));
    assert_true(gw_h1_connection_lists(v, strlen(v), "Keep-Alive", 10));
    assert_false(gw_h1_connection_lists(v, strlen(v), "x-fo", 4));
    assert_false(gw_h1_connection_lists(v, strlen(v), "foo", 3));
    assert_false(gw_h1_connection_lists(v, strlen(v), "", 0));
    assert_false(gw_h1_connection_lists("", 0, "close", 5));
    assert_false(gw_h1_connection_lists(NULL, 0, "close", 5));
    assert_true(gw_h1_connection_lists("close", 5, "close", 5));
    /* Only conn_len bytes count. */
    assert_false(gw_h1_connection_lists("clos, close", 4, "close", 5));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_status_line_and_headers_into_caller_buffer),
        cmocka_unit_test(head_split_at_every_byte_is_incomplete_until_the_blank_line),
        cmocka_unit_test(prev_len_beyond_len_is_ignored_not_overread),
        cmocka_unit_test(status_101_is_invalid),
        cmocka_unit_test(status_outside_100_to_599_is_invalid),
        cmocka_unit_test(status_line_needs_space_after_code_but_reason_may_be_empty),
        cmocka_unit_test(minor_version_above_1_is_read_as_http_1_1_and_http_2_is_invalid),
        cmocka_unit_test(obs_fold_continuation_line_is_invalid),
        cmocka_unit_test(header_value_with_nul_cr_or_del_is_invalid),
        cmocka_unit_test(bare_lf_ends_a_header_line_so_no_value_contains_lf),
        cmocka_unit_test(header_name_that_is_not_a_token_is_invalid),
        cmocka_unit_test(more_than_max_headers_is_invalid),
        cmocka_unit_test(head_response_with_content_length_1000_has_no_body),
        cmocka_unit_test(status_1xx_204_and_304_have_no_body_despite_content_length),
        cmocka_unit_test(content_length_zero_has_no_body_and_keeps_connection),
        cmocka_unit_test(transfer_encoding_ending_in_chunked_is_chunked),
        cmocka_unit_test(transfer_encoding_not_ending_in_chunked_runs_to_close),
        cmocka_unit_test(transfer_encoding_chunked_twice_empty_or_quoted_is_invalid),
        cmocka_unit_test(content_length_with_chunked_is_chunked_without_keep_alive),
        cmocka_unit_test(http_1_0_with_transfer_encoding_is_never_reused),
        cmocka_unit_test(content_length_gives_length_body),
        cmocka_unit_test(content_length_must_be_digits_only),
        cmocka_unit_test(content_length_up_to_int64_max_is_accepted_and_above_is_invalid),
        cmocka_unit_test(repeated_identical_content_lengths_are_accepted),
        cmocka_unit_test(differing_content_lengths_are_invalid),
        cmocka_unit_test(no_length_and_no_transfer_encoding_runs_to_close),
        cmocka_unit_test(http_1_1_keeps_alive_unless_connection_close),
        cmocka_unit_test(http_1_0_keeps_alive_only_with_connection_keep_alive),
        cmocka_unit_test(continue_100_then_200_in_one_buffer_parse_one_after_the_other),
        cmocka_unit_test(early_hints_103_then_200_keep_their_own_headers),
        cmocka_unit_test(length_body_never_passes_bytes_beyond_content_length),
        cmocka_unit_test(length_body_in_pieces_completes_on_the_last_byte),
        cmocka_unit_test(length_body_eof_before_the_end_is_truncation),
        cmocka_unit_test(none_body_is_complete_at_once_and_every_byte_is_extra),
        cmocka_unit_test(close_body_passes_everything_through_and_ends_only_at_eof),
        cmocka_unit_test(decode_after_completion_reports_every_byte_as_extra),
        cmocka_unit_test(chunked_body_in_one_buffer_decodes_and_reports_extra),
        cmocka_unit_test(chunked_body_fed_one_byte_at_a_time_decodes_the_same_bytes),
        cmocka_unit_test(chunked_body_in_random_splits_decodes_the_same_bytes),
        cmocka_unit_test(chunked_extra_bytes_sit_right_after_the_decoded_payload),
        cmocka_unit_test(chunked_trailers_are_consumed_not_reported_as_extra),
        cmocka_unit_test(chunked_extensions_are_ignored),
        cmocka_unit_test(chunk_size_with_bad_hex_is_invalid),
        cmocka_unit_test(chunk_data_not_followed_by_line_end_is_invalid),
        cmocka_unit_test(chunk_size_overflow_is_invalid),
        cmocka_unit_test(chunked_eof_before_the_last_chunk_is_truncation),
        cmocka_unit_test(head_then_body_from_one_read),
        cmocka_unit_test(hop_by_hop_headers_are_recognised_case_insensitively),
        cmocka_unit_test(connection_lists_finds_tokens_with_ows_case_insensitively),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
