/*
 * config_values.c - the strict value parsers, ${VAR} expansion and the diagnostic list used by
 * the config loader (config.c).
 *
 * Why apart from the loader: these are pure functions of a string (plus getenv), so
 * tests/unit/test_gateway_config_values.c drives every edge case without YAML, and the admin API
 * can reuse the parsers for values it receives at run time.
 *
 * Invariants: every parser is all-or-nothing (outputs are written only on success); none accepts
 * spaces, signs, missing units or trailing junk; arithmetic overflow is an error, never a wrap.
 * Nothing here allocates except the diagnostic list, which its caller owns and which holds at
 * most DIAG_MAX items (later ones are dropped: a config with that many errors says enough).
 */
#include "config.h"
#include "config_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define DIAG_MAX 10000

/* ---- diagnostics ---- */

void gw_diag_init(gw_diag_t *d)
{
    d->items = NULL;
    d->n = 0;
    d->cap = 0;
}

void gw_diag_dispose(gw_diag_t *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->items[i]);
    free(d->items);
    gw_diag_init(d);
}

/* Takes ownership of s: appends it, or frees it when the list is full or cannot grow. */
static void diag_push(gw_diag_t *d, char *s)
{
    if (d->n >= DIAG_MAX) {
        free(s);
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        char **items = realloc(d->items, cap * sizeof *items);
        if (!items) {
            free(s);
            return;
        }
        d->items = items;
        d->cap = cap;
    }
    d->items[d->n++] = s;
}

void gw_diag_add(gw_diag_t *d, const char *file, unsigned line, unsigned col, const char *fmt, ...)
{
    char *msg = NULL, *s = NULL;
    va_list ap;

    if (!d)
        return;
    va_start(ap, fmt);
    int r = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (r < 0)
        return;
    if (asprintf(&s, "%s:%u:%u: %s", file ? file : "<config>", line, col, msg) < 0)
        s = NULL;
    free(msg);
    if (s)
        diag_push(d, s);
}

typedef struct diag_key {
    unsigned long line, col;
    size_t idx;
    char *s;
} diag_key_t;

static int diag_cmp(const void *a, const void *b)
{
    const diag_key_t *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

void gw_cfg_diag_sort(gw_diag_t *d, size_t file_len)
{
    diag_key_t *keys = d->n ? calloc(d->n, sizeof *keys) : NULL;
    if (!keys)
        return; /* out of memory: unsorted is still correct */
    for (size_t i = 0; i < d->n; i++) {
        const char *p = d->items[i] + file_len;
        char *end = NULL;
        keys[i].idx = i;
        keys[i].s = d->items[i];
        keys[i].line = strtoul(p + (*p == ':'), &end, 10);
        keys[i].col = (end && *end == ':') ? strtoul(end + 1, NULL, 10) : 0;
    }
    qsort(keys, d->n, sizeof *keys, diag_cmp);
    for (size_t i = 0; i < d->n; i++)
        d->items[i] = keys[i].s;
    free(keys);
}

void gw_cfg_diag_move(gw_diag_t *dst, gw_diag_t *src)
{
    for (size_t i = 0; i < src->n; i++) {
        if (dst)
            diag_push(dst, src->items[i]);
        else
            free(src->items[i]);
    }
    free(src->items);
    gw_diag_init(src);
}

/* ---- numbers ---- */

/* Scans one or more decimal digits; returns the first byte after them, or NULL when there is no
 * digit or the number overflows uint64. */
static const char *scan_uint(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;

    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return NULL;
        v = v * 10 + d;
    }
    if (p == s)
        return NULL;
    *out = v;
    return p;
}

int gw_cfg_parse_uint(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *end = s ? scan_uint(s, &v) : NULL;
    if (!end || *end)
        return -1;
    *out = v;
    return 0;
}

/* The unit of a duration as milliseconds; 0 when the rest of the string is not exactly a unit. */
static uint64_t duration_unit_ms(const char *u)
{
    static const struct {
        const char *name;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(u, units[i].name))
            return units[i].ms;
    return 0;
}

int gw_parse_duration_ms(const char *s, uint64_t *out)
{
    uint64_t n, mult;
    const char *unit = s ? scan_uint(s, &n) : NULL;

    if (!unit)
        return -1;
    mult = duration_unit_ms(unit);
    if (!mult || n > UINT64_MAX / mult)
        return -1;
    *out = n * mult;
    return 0;
}

int gw_parse_rate(const char *s, gw_rate_t *out)
{
    uint64_t n, period;
    const char *p = s ? scan_uint(s, &n) : NULL;

    if (!p || *p != '/' || n < 1 || n > UINT32_MAX)
        return -1;
    if (!strcmp(p + 1, "s"))
        period = 1000;
    else if (!strcmp(p + 1, "m"))
        period = 60000;
    else if (!strcmp(p + 1, "h"))
        period = 3600000;
    else
        return -1;
    out->tokens = n;
    out->period_ms = period;
    return 0;
}

/* Scans "W" or "W.F" (W <= 100, 1 to 4 decimals in F) as parts per million of 100; returns the
 * byte after the number or NULL when malformed or above 100. */
static const char *scan_percent(const char *s, uint32_t *ppm)
{
    uint64_t whole, v;
    uint32_t frac = 0;
    const char *p = scan_uint(s, &whole);

    if (!p || whole > 100)
        return NULL;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9' && digits < 4; p++, digits++)
            frac = frac * 10 + (uint32_t)(*p - '0');
        if (digits == 0 || (*p >= '0' && *p <= '9'))
            return NULL;
        for (; digits < 4; digits++)
            frac *= 10;
    }
    v = whole * 10000 + frac;
    if (v > GW_PPM_ONE)
        return NULL;
    *ppm = (uint32_t)v;
    return p;
}

int gw_parse_ratio_ppm(const char *s, uint32_t *out)
{
    uint32_t v;
    const char *p = s ? scan_percent(s, &v) : NULL;
    if (!p || p[0] != '%' || p[1])
        return -1;
    *out = v;
    return 0;
}

int gw_cfg_parse_percent(const char *s, uint32_t *out)
{
    uint32_t v;
    const char *p = s ? scan_percent(s, &v) : NULL;
    if (!p || (p[0] && (p[0] != '%' || p[1])))
        return -1;
    *out = v;
    return 0;
}

/* ---- addresses ---- */

static int parse_port(const char *s, uint16_t *out)
{
    uint64_t v;
    if (gw_cfg_parse_uint(s, &v) < 0 || v < 1 || v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* Splits "[v6]:port" or "v4:port" into a host copy and the port text. */
static int split_host_port(const char *s, char *host, size_t cap, const char **port, int *family)
{
    const char *h = s, *end;

    if (s[0] == '[') {
        h = s + 1;
        end = strchr(h, ']');
        if (!end || end[1] != ':')
            return -1;
        *port = end + 2;
        *family = AF_INET6;
    } else {
        end = strchr(s, ':');
        if (!end || strchr(end + 1, ':'))
            return -1;
        *port = end + 1;
        *family = AF_INET;
    }
    if (end == h || (size_t)(end - h) >= cap)
        return -1;
    memcpy(host, h, (size_t)(end - h));
    host[end - h] = '\0';
    return 0;
}

int gw_parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port, int *family)
{
    char text[INET6_ADDRSTRLEN], canon[INET6_ADDRSTRLEN];
    unsigned char bin[sizeof(struct in6_addr)];
    const char *port_text;
    uint16_t p;
    int fam;

    if (!s || split_host_port(s, text, sizeof text, &port_text, &fam) < 0)
        return -1;
    if (parse_port(port_text, &p) < 0 || inet_pton(fam, text, bin) != 1)
        return -1;
    if (!inet_ntop(fam, bin, canon, sizeof canon) || strlen(canon) >= host_cap)
        return -1;
    memcpy(host, canon, strlen(canon) + 1);
    *port = p;
    *family = fam;
    return 0;
}

bool gw_cfg_addr_is_loopback(int family, const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (family == AF_INET && inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (family != AF_INET6 || inet_pton(AF_INET6, host, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

/* ---- ${VAR} expansion ---- */

/* Output that counts everything and stores what fits. */
typedef struct sink {
    char *out;
    size_t cap, n;
} sink_t;

static void put(sink_t *k, const char *s, size_t n)
{
    if (k->out && k->n < k->cap) {
        size_t room = k->cap - k->n;
        memcpy(k->out + k->n, s, n < room ? n : room);
    }
    k->n += n;
}

static bool valid_var_name(const char *s, size_t n)
{
    if (n == 0 || n > GW_CFG_VAR_MAX || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok =
            (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        if (!ok)
            return false;
    }
    return true;
}

/* Expands the reference "${...}" at in[0] (in[0..1] is "${"); returns the bytes it spans or -1. */
static ssize_t expand_ref(const char *in, size_t len, sink_t *k, char *err, size_t errcap)
{
    const char *body = in + 2, *close = memchr(body, '}', len - 2), *dflt, *v;
    char name[GW_CFG_VAR_MAX + 1];
    size_t blen, nlen;

    if (!close) {
        snprintf(err, errcap, "unterminated '${' (write $$ for a literal $)");
        return -1;
    }
    blen = (size_t)(close - body);
    dflt = memmem(body, blen, ":-", 2);
    nlen = dflt ? (size_t)(dflt - body) : blen;
    if (!valid_var_name(body, nlen)) {
        snprintf(err, errcap, "invalid environment variable name '%.*s'",
                 (int)(nlen > 64 ? 64 : nlen), body);
        return -1;
    }
    memcpy(name, body, nlen);
    name[nlen] = '\0';
    v = getenv(name);
    if (dflt && (!v || !*v)) {
        put(k, dflt + 2, blen - nlen - 2);
    } else if (!v) {
        snprintf(err, errcap, "environment variable '%s' is not set", name);
        return -1;
    } else {
        put(k, v, strlen(v));
    }
    return close - in + 1;
}

ssize_t gw_cfg_expand_env(const char *in, size_t len, char *out, size_t cap, char *err,
                          size_t errcap)
{
    sink_t k = {out, cap, 0};
    size_t i = 0;

    while (i < len) {
        const char *dollar = memchr(in + i, '$', len - i);
        size_t lit = dollar ? (size_t)(dollar - (in + i)) : len - i;
        put(&k, in + i, lit);
        i += lit;
        if (i >= len)
            break;
        if (i + 1 < len && in[i + 1] == '{') {
            ssize_t used = expand_ref(in + i, len - i, &k, err, errcap);
            if (used < 0)
                return -1;
            i += (size_t)used;
        } else {
            put(&k, "$", 1);
            i += (i + 1 < len && in[i + 1] == '$') ? 2 : 1;
        }
    }
    if (out && cap)
        out[k.n < cap ? k.n : cap - 1] = '\0';
    return (ssize_t)k.n;
}
