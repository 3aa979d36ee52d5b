/*
 * config.c - loads the YAML config (SPEC section 2) into one validated, immutable gw_config_t.
 *
 * How: libyaml's document API builds the node tree (every node keeps the line/column where it
 * starts); the loader then walks each mapping against a table of the keys it may hold (field_t:
 * key, parser, destination offset, bounds). One generic walker reports unknown keys, duplicate
 * keys and keys a channel type does not take; the small per-key parsers report wrong types and
 * bad values. Every problem becomes a "FILE:LINE:COL: message" diagnostic and the walk goes on,
 * so one run reports all of them; at the end they are sorted by position.
 *
 * Why tables: the config has ~90 keys; a table per mapping keeps each function short, makes the
 * key set of a section visible in one place, and lets docs/config.md be checked against it.
 *
 * Order: sections that others refer to are loaded first, whatever their order in the file
 * (upstreams before routes; channels, then tiers, then rules), so every reference is resolved
 * with the position of the value that makes it. Defaults are written into a struct before its
 * mapping is walked, so keys that are absent keep them.
 *
 * Memory: the config, its strings and its arrays live in one arena (arena_t) that
 * gw_config_free() releases at once; on failure the loader frees it before returning. The arena
 * is bounded (ARENA_MAX_BYTES); running out is reported as "FILE:0:0: out of memory". Values
 * after ${VAR} expansion are arena strings too (a config is a few KB; simpler than ownership).
 *
 * Who calls it: the supervisor at start and on reload, and `breakwater -t`. Not thread-safe
 * against concurrent setenv() (it reads the environment).
 */
#include "config.h"
#include "config_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml.h>

#ifndef ARENA_BLOCK_UNITS /* overridable so allocation-failure tests can fail every allocation */
#define ARENA_BLOCK_UNITS 512 /* 16 KiB blocks with glibc's 32-byte max_align_t */
#endif
#define ARENA_MAX_BYTES ((size_t)64 << 20) /* bound on one config's memory */
#define FILE_MAX_BYTES ((size_t)16 << 20)  /* bound on a config file */
#define MAX_DIAGS 500                      /* then one "too many errors" and silence */
#define WHERE_MAX 256                      /* "upstream 'users' health_check" */
#define NAME_MAX_LEN 64                    /* upstream, route and channel names */
#define MAX_FIELDS 16                      /* keys in one mapping table */
#define MAX_BURST_KEYS_DEFAULT 100000u

/* ---- arena ---- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap; /* in units of max_align_t */
    max_align_t data[];
} arena_block_t;

typedef struct arena {
    arena_block_t *head;
    size_t bytes;
    bool oom;
} arena_t;

static arena_block_t *arena_grow(arena_t *a, size_t units)
{
    size_t cap = units > ARENA_BLOCK_UNITS ? units : ARENA_BLOCK_UNITS;
    size_t bytes = sizeof(arena_block_t) + cap * sizeof(max_align_t);
    arena_block_t *b = NULL;

    if (a->bytes + bytes <= ARENA_MAX_BYTES)
        b = calloc(1, bytes);
    if (!b) {
        a->oom = true;
        return NULL;
    }
    b->cap = cap;
    b->next = a->head;
    a->head = b;
    a->bytes += bytes;
    return b;
}

/* Returns n zeroed bytes aligned for any type, or NULL (with a->oom set) when out of memory. */
static void *arena_alloc(arena_t *a, size_t n)
{
    size_t units = n / sizeof(max_align_t) + 1;
    arena_block_t *b = a->head;
    void *p;

    if (n > ARENA_MAX_BYTES) {
        a->oom = true;
        return NULL;
    }
    if (!b || b->cap - b->used < units)
        b = arena_grow(a, units);
    if (!b)
        return NULL;
    p = b->data + b->used;
    b->used += units;
    return p;
}

static void *arena_array(arena_t *a, size_t count, size_t size)
{
    if (size && count > ARENA_MAX_BYTES / size) {
        a->oom = true;
        return NULL;
    }
    return arena_alloc(a, count * size);
}

static char *arena_strndup(arena_t *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p)
        memcpy(p, s, n);
    return p;
}

static void arena_free(arena_t *a)
{
    if (!a)
        return;
    while (a->head) {
        arena_block_t *next = a->head->next;
        free(a->head);
        a->head = next;
    }
    free(a);
}

/* ---- loader state and diagnostics ---- */

typedef struct loader {
    const char *file;
    gw_diag_t diag; /* sorted and moved to the caller's list at the end */
    size_t nerrors; /* counts problems even when a diagnostic could not be stored */
    arena_t *arena;
    gw_config_t *cfg;
    yaml_document_t doc;
    bool have_doc;
    yaml_node_t *alerts_key; /* where to report problems of default alert rules */
} loader_t;

static void fail_at(loader_t *L, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(loader_t *L, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void vfail(loader_t *L, yaml_mark_t m, const char *fmt, va_list ap)
{
    char msg[768];
    unsigned line = (unsigned)m.line + 1, col = (unsigned)m.column + 1;

    if (L->nerrors++ > MAX_DIAGS)
        return;
    if (L->nerrors == MAX_DIAGS + 1) {
        gw_diag_add(&L->diag, L->file, line, col, "too many errors; stopping here");
        return;
    }
    vsnprintf(msg, sizeof msg, fmt, ap);
    gw_diag_add(&L->diag, L->file, line, col, "%s", msg);
}

static void fail_at(loader_t *L, yaml_mark_t m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(L, m, fmt, ap);
    va_end(ap);
}

static void fail(loader_t *L, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(L, n->start_mark, fmt, ap);
    va_end(ap);
}

static char *astrdup(loader_t *L, const char *s)
{
    return arena_strndup(L->arena, s, strlen(s));
}

static gw_srcpos_t srcpos(const yaml_node_t *n)
{
    gw_srcpos_t p = {(unsigned)n->start_mark.line + 1, (unsigned)n->start_mark.column + 1};
    return p;
}

/* " in WHERE" or nothing at the top level, as two %s arguments. */
#define IN(w) ((w) ? " in " : ""), ((w) ? (w) : "")

/* ---- YAML nodes ---- */

static yaml_node_t *node_at(loader_t *L, int id)
{
    return yaml_document_get_node(&L->doc, id);
}

static bool is_null(const yaml_node_t *n)
{
    const char *v;
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    v = (const char *)n->data.scalar.value;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

static const char *kind_name(const yaml_node_t *n)
{
    if (n->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (n->type == YAML_SEQUENCE_NODE)
        return "a list";
    if (is_null(n))
        return "empty";
    return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "a scalar" : "a quoted string";
}

static size_t map_len(const yaml_node_t *n)
{
    return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static bool want_type(loader_t *L, const yaml_node_t *n, yaml_node_type_t t, const char *subj)
{
    if (n->type == t)
        return true;
    fail(L, n, "%s must be %s, not %s", subj, t == YAML_MAPPING_NODE ? "a mapping" : "a list",
         kind_name(n));
    return false;
}

/* The text of a key node (keys are never ${}-expanded), or NULL (reported) for a non-scalar. */
static const char *key_text(loader_t *L, const yaml_node_t *k)
{
    if (k->type == YAML_SCALAR_NODE)
        return (const char *)k->data.scalar.value;
    fail(L, k, "keys must be strings, not %s", kind_name(k));
    return NULL;
}

/* The value of `name` in a mapping, or NULL. */
static yaml_node_t *map_get(loader_t *L, const yaml_node_t *map, const char *name)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node_at(L, p->key);
        if (k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, name))
            return node_at(L, p->value);
    }
    return NULL;
}

/* A scalar's text after ${VAR} expansion, in the arena. NULL (reported) on expansion errors. */
static char *expand(loader_t *L, const yaml_node_t *n, const char *subj)
{
    const char *in = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    char err[256], *out;
    ssize_t need;

    if (memchr(in, '\0', len)) {
        fail(L, n, "%s must not contain a NUL byte", subj);
        return NULL;
    }
    need = gw_cfg_expand_env(in, len, NULL, 0, err, sizeof err);
    if (need < 0) {
        fail(L, n, "%s: %s", subj, err);
        return NULL;
    }
    out = arena_alloc(L->arena, (size_t)need + 1);
    if (out && gw_cfg_expand_env(in, len, out, (size_t)need + 1, err, sizeof err) != need) {
        fail(L, n, "%s: the environment changed while loading", subj);
        return NULL;
    }
    return out;
}

/* The expanded text of a non-null scalar; NULL (reported) for anything else. */
static char *want_text(loader_t *L, const yaml_node_t *n, const char *subj, const char *what)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n)) {
        fail(L, n, "%s must be %s, not %s", subj, what, kind_name(n));
        return NULL;
    }
    return expand(L, n, subj);
}

/* Integers and booleans are plain YAML scalars; a quoted one only when it holds a ${VAR}
 * reference (in a flow mapping, `{ n: ${N} }` does not parse unquoted). */
static bool untyped_scalar(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return false;
    return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ||
           strstr((const char *)n->data.scalar.value, "${");
}

/* An integer in [min, max] (see untyped_scalar). */
static bool want_uint(loader_t *L, const yaml_node_t *n, const char *subj, uint64_t min,
                      uint64_t max, uint64_t *out)
{
    char *t;
    uint64_t v;

    if (!untyped_scalar(n)) {
        fail(L, n, "%s must be an integer, not %s", subj, kind_name(n));
        return false;
    }
    t = expand(L, n, subj);
    if (!t)
        return false;
    if (gw_cfg_parse_uint(t, &v) < 0 || v < min || v > max) {
        fail(L, n, "%s must be an integer from %llu to %llu, not '%s'", subj,
             (unsigned long long)min, (unsigned long long)max, t);
        return false;
    }
    *out = v;
    return true;
}

/* Upstream, route and channel names: they appear in metrics labels and admin API paths. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static bool check_name(loader_t *L, const yaml_node_t *n, const char *what, const char *name)
{
    if (valid_name(name))
        return true;
    fail(L, n, "invalid %s name '%s' (use 1 to %d letters, digits, '-', '_' or '.')", what, name,
         NAME_MAX_LEN);
    return false;
}

/* ---- the table walker ---- */

typedef struct field_ctx field_ctx_t;
typedef void (*field_fn)(field_ctx_t *c);

typedef struct field {
    const char *key;
    field_fn parse; /* NULL: only recorded in seen_t; the caller parses it */
    size_t offset;  /* destination inside the walked struct */
    uint64_t min, max;
} field_t;

struct field_ctx {
    loader_t *L;
    const field_t *f;
    yaml_node_t *key, *val;
    void *base;        /* the struct being filled */
    void *dst;         /* base + f->offset */
    const char *where; /* the enclosing mapping ("upstream 'users'"), NULL at the top level */
    char subj[WHERE_MAX + 80]; /* "'timeout' in upstream 'users'" */
};

typedef struct seen {
    yaml_node_t *key[MAX_FIELDS], *val[MAX_FIELDS];
} seen_t;

typedef struct walk {
    const field_t *fields;
    size_t n;
    uint32_t allowed;  /* bit i set: fields[i] may appear in this mapping */
    const char *where; /* as in field_ctx_t */
    const char *kind;  /* what narrows `allowed`, for messages ("of type slack"), or NULL */
} walk_t;

#define NFIELDS(t) (sizeof(t) / sizeof((t)[0]))
#define WALK(t, w) ((walk_t){(t), NFIELDS(t), UINT32_MAX, (w), NULL})
#define BIT(i) (1u << (i))

static int find_field(const walk_t *w, const char *key)
{
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->fields[i].key, key))
            return (int)i;
    return -1;
}

static void allowed_keys(const walk_t *w, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < w->n && off < cap; i++)
        if (w->allowed & BIT(i))
            off +=
                (size_t)snprintf(buf + off, cap - off, "%s%s", off ? ", " : "", w->fields[i].key);
}

static void deny_key(loader_t *L, const yaml_node_t *k, const walk_t *w, const char *name)
{
    char keys[256];
    allowed_keys(w, keys, sizeof keys);
    fail(L, k, "key '%s' is not valid for %s%s%s (valid keys: %s)", name, w->where ? w->where : "",
         w->kind ? " " : "", w->kind ? w->kind : "", keys);
}

static void visit_pair(loader_t *L, const walk_t *w, yaml_node_pair_t *p, void *base, seen_t *seen)
{
    yaml_node_t *k = node_at(L, p->key), *v = node_at(L, p->value);
    const char *name = key_text(L, k);
    int i = name ? find_field(w, name) : -1;
    field_ctx_t c;

    if (!name)
        return;
    if (i < 0) {
        fail(L, k, "unknown key '%s'%s%s", name, IN(w->where));
        return;
    }
    if (!(w->allowed & BIT(i))) {
        deny_key(L, k, w, name);
        return;
    }
    if (seen->key[i]) {
        fail(L, k, "duplicate key '%s'%s%s", name, IN(w->where));
        return;
    }
    seen->key[i] = k;
    seen->val[i] = v;
    if (!w->fields[i].parse)
        return;
    c = (field_ctx_t){L, &w->fields[i], k, v, base, (char *)base + w->fields[i].offset, w->where,
                      ""};
    snprintf(c.subj, sizeof c.subj, "'%s'%s%s", name, IN(w->where));
    w->fields[i].parse(&c);
}

/* Walks a mapping against w: records each key in seen and runs its parser. */
static void walk_map(loader_t *L, yaml_node_t *map, const walk_t *w, void *base, seen_t *seen)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
        visit_pair(L, w, p, base, seen);
}

/* Walks the mapping under the key of c, naming it "<where> <key>" in messages. where_buf holds
 * that name afterwards. False (reported) when the value is not a mapping. */
static bool sub_walk(field_ctx_t *c, const field_t *fields, size_t n, void *base, seen_t *seen,
                     char *where_buf)
{
    walk_t w = {fields, n, UINT32_MAX, where_buf, NULL};
    snprintf(where_buf, WHERE_MAX, "%s%s%s", c->where ? c->where : "", c->where ? " " : "",
             c->f->key);
    if (!want_type(c->L, c->val, YAML_MAPPING_NODE, c->subj))
        return false;
    walk_map(c->L, c->val, &w, base, seen);
    return true;
}

/* The value node of whichever of two keys was given, preferring the first; NULL if neither. */
static yaml_node_t *either(const seen_t *s, int a, int b)
{
    return s->val[a] ? s->val[a] : s->val[b];
}

/* ---- field parsers (field_fn) ---- */

static void p_duration(field_ctx_t *c)
{
    uint64_t v;
    char *t = want_text(c->L, c->val, c->subj, "a duration");
    if (!t)
        return;
    if (gw_parse_duration_ms(t, &v) < 0) {
        fail(c->L, c->val, "invalid duration '%s' for %s (use e.g. 250ms, 5s, 2m, 1h, 1d)", t,
             c->subj);
        return;
    }
    if (v < c->f->min) {
        fail(c->L, c->val, "%s must be more than 0s", c->subj);
        return;
    }
    *(uint64_t *)c->dst = v;
}

static void p_rate(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a rate");
    if (t && gw_parse_rate(t, c->dst) < 0)
        fail(c->L, c->val, "invalid rate '%s' for %s (use N/s, N/m or N/h with N >= 1)", t,
             c->subj);
}

static void p_ratio(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a ratio");
    if (t && gw_parse_ratio_ppm(t, c->dst) < 0)
        fail(c->L, c->val,
             "invalid ratio '%s' for %s (use 0%% to 100%% with up to 4 decimals, e.g. 12.5%%)", t,
             c->subj);
}

static void p_percent(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a percentage");
    if (t && gw_cfg_parse_percent(t, c->dst) < 0)
        fail(c->L, c->val, "invalid percentage '%s' for %s (use 0 to 100, e.g. 5 or 12.5)", t,
             c->subj);
}

static void p_u32(field_ctx_t *c)
{
    uint64_t v;
    if (want_uint(c->L, c->val, c->subj, c->f->min, c->f->max, &v))
        *(uint32_t *)c->dst = (uint32_t)v;
}

static void p_u16(field_ctx_t *c)
{
    uint64_t v;
    if (want_uint(c->L, c->val, c->subj, c->f->min, c->f->max, &v))
        *(uint16_t *)c->dst = (uint16_t)v;
}

/* true/True/TRUE or false/False/FALSE (see untyped_scalar), after ${VAR} expansion. */
static void p_bool(field_ctx_t *c)
{
    static const char *const yes[] = {"true", "True", "TRUE"};
    static const char *const no[] = {"false", "False", "FALSE"};
    const yaml_node_t *n = c->val;
    const char *v;

    if (!untyped_scalar(n)) {
        fail(c->L, n, "%s must be true or false, not %s", c->subj, kind_name(n));
        return;
    }
    v = expand(c->L, n, c->subj);
    for (size_t i = 0; v && i < 3; i++) {
        if (!strcmp(v, yes[i]) || !strcmp(v, no[i])) {
            *(bool *)c->dst = !strcmp(v, yes[i]);
            return;
        }
    }
    if (v)
        fail(c->L, n, "%s must be true or false, not '%s'", c->subj, v);
}

static void p_nonempty(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a string");
    if (t && !*t)
        fail(c->L, c->val, "%s must not be empty", c->subj);
    else if (t)
        *(char **)c->dst = t;
}

/* An optional secret: an empty string (e.g. "${X:-}") means none. */
static void p_optional(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a string");
    if (t)
        *(char **)c->dst = *t ? t : NULL;
}

static bool url_ok(const char *t, const char *const *schemes)
{
    for (; *schemes; schemes++) {
        size_t n = strlen(*schemes);
        if (!strncmp(t, *schemes, n) && t[n] && !strpbrk(t, " \t\r\n"))
            return true;
    }
    return false;
}

static void url_field(field_ctx_t *c, const char *const *schemes, const char *hint)
{
    char *t = want_text(c->L, c->val, c->subj, "a URL");
    if (t && !url_ok(t, schemes))
        fail(c->L, c->val, "invalid URL '%s' for %s (must start with %s)", t, c->subj, hint);
    else if (t)
        *(char **)c->dst = t;
}

static void p_url(field_ctx_t *c)
{
    static const char *const http[] = {"http://", "https://", NULL};
    url_field(c, http, "http:// or https://");
}

static void p_smtp_url(field_ctx_t *c)
{
    static const char *const smtp[] = {"smtp://", "smtps://", NULL};
    url_field(c, smtp, "smtp:// or smtps://");
}

/* Parses one address node into a (arena strings). */
static bool to_addr(loader_t *L, const yaml_node_t *n, const char *subj, gw_addr_t *a)
{
    char host[64];
    char *t = want_text(L, n, subj, "an address");

    if (!t)
        return false;
    if (gw_parse_addr(t, host, sizeof host, &a->port, &a->family) < 0) {
        fail(L, n,
             "invalid address '%s' for %s (use a numeric IPv4 \"1.2.3.4:80\" or IPv6 "
             "\"[::1]:80\", port 1-65535)",
             t, subj);
        return false;
    }
    a->text = t;
    a->host = astrdup(L, host);
    return a->host != NULL;
}

static void p_addr(field_ctx_t *c)
{
    gw_addr_t a;
    if (to_addr(c->L, c->val, c->subj, &a))
        *(gw_addr_t *)c->dst = a;
}

static bool same_addr(const gw_addr_t *a, const gw_addr_t *b)
{
    return a->family == b->family && a->port == b->port && !strcmp(a->host, b->host);
}

/* A non-empty list of distinct addresses. */
static void addr_list(field_ctx_t *c, gw_addr_t **out, size_t *nout)
{
    size_t n = 0;
    gw_addr_t *arr;

    if (!want_type(c->L, c->val, YAML_SEQUENCE_NODE, c->subj))
        return;
    if (seq_len(c->val) == 0) {
        fail(c->L, c->val, "%s must list at least one address", c->subj);
        return;
    }
    arr = arena_array(c->L->arena, seq_len(c->val), sizeof *arr);
    for (yaml_node_item_t *it = c->val->data.sequence.items.start;
         arr && it < c->val->data.sequence.items.top; it++) {
        yaml_node_t *item = node_at(c->L, *it);
        if (!to_addr(c->L, item, c->subj, &arr[n]))
            continue;
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = same_addr(&arr[j], &arr[n]);
        if (dup)
            fail(c->L, item, "duplicate address '%s' in %s", arr[n].text, c->subj);
        else
            n++;
    }
    *out = arr;
    *nout = n;
}

/* A non-empty list of non-empty strings. */
static void string_list(field_ctx_t *c, char ***out, size_t *nout)
{
    size_t n = 0;
    char **arr;

    if (!want_type(c->L, c->val, YAML_SEQUENCE_NODE, c->subj))
        return;
    if (seq_len(c->val) == 0) {
        fail(c->L, c->val, "%s must not be empty", c->subj);
        return;
    }
    arr = arena_array(c->L->arena, seq_len(c->val), sizeof *arr);
    for (yaml_node_item_t *it = c->val->data.sequence.items.start;
         arr && it < c->val->data.sequence.items.top; it++) {
        yaml_node_t *item = node_at(c->L, *it);
        char *t = want_text(c->L, item, c->subj, "a string");
        if (t && !*t)
            fail(c->L, item, "%s must not hold an empty string", c->subj);
        else if (t)
            arr[n++] = t;
    }
    *out = arr;
    *nout = n;
}

/* ---- top level: listen, admin, watchdog, debug ---- */

static void p_listen(field_ctx_t *c)
{
    gw_config_t *cfg = c->base;
    addr_list(c, &cfg->listen, &cfg->nlisten);
}

enum { ADM_LISTEN = 0, ADM_TOKEN };
static const field_t admin_fields[] = {
    [ADM_LISTEN] = {"listen", p_addr, offsetof(gw_config_t, admin_listen), 0, 0},
    [ADM_TOKEN] = {"token", p_optional, offsetof(gw_config_t, admin_token), 0, 0},
};

static void p_admin(field_ctx_t *c)
{
    gw_config_t *cfg = c->base;
    char where[WHERE_MAX];
    seen_t seen = {0};

    if (!sub_walk(c, admin_fields, NFIELDS(admin_fields), cfg, &seen, where))
        return;
    if (seen.val[ADM_LISTEN] && !cfg->admin_token && cfg->admin_listen.host &&
        !gw_cfg_addr_is_loopback(cfg->admin_listen.family, cfg->admin_listen.host))
        fail(c->L, seen.val[ADM_LISTEN], "admin API on a non-loopback address needs a token");
}

static const field_t watchdog_fields[] = {
    {"stall_after", p_duration, offsetof(gw_config_t, stall_after_ms), 1, 0},
};

static const field_t debug_fields[] = {
    {"fault_headers", p_bool, offsetof(gw_config_t, debug_fault_headers), 0, 0},
};

static void p_watchdog(field_ctx_t *c)
{
    char where[WHERE_MAX];
    seen_t seen = {0};
    sub_walk(c, watchdog_fields, NFIELDS(watchdog_fields), c->base, &seen, where);
}

static void p_debug(field_ctx_t *c)
{
    char where[WHERE_MAX];
    seen_t seen = {0};
    sub_walk(c, debug_fields, NFIELDS(debug_fields), c->base, &seen, where);
}

/* ---- upstreams ---- */

static void p_hosts(field_ctx_t *c)
{
    gw_upstream_config_t *u = c->base;
    addr_list(c, &u->hosts, &u->nhosts);
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/* Sorts and removes duplicates in place; returns the new count. */
static size_t sort_unique_u16(uint16_t *v, size_t n)
{
    size_t k = 0;
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_u16);
    for (size_t i = 1; i < n; i++)
        if (v[i] != v[k])
            v[++k] = v[i];
    return k + 1;
}

static void p_statuses(field_ctx_t *c)
{
    gw_upstream_config_t *u = c->base;
    uint16_t *arr;
    size_t n = 0;
    uint64_t v;

    if (!want_type(c->L, c->val, YAML_SEQUENCE_NODE, c->subj))
        return;
    arr = arena_array(c->L->arena, seq_len(c->val) + 1, sizeof *arr);
    for (yaml_node_item_t *it = c->val->data.sequence.items.start;
         arr && it < c->val->data.sequence.items.top; it++)
        if (want_uint(c->L, node_at(c->L, *it), c->subj, 100, 599, &v))
            arr[n++] = (uint16_t)v;
    u->failure_statuses = arr;
    u->nfailure_statuses = sort_unique_u16(arr, n);
}

enum { HC_PATH = 0, HC_INTERVAL, HC_TIMEOUT, HC_HEALTHY, HC_UNHEALTHY };
static const field_t health_fields[] = {
    [HC_PATH] = {"path", p_nonempty, offsetof(gw_health_check_config_t, path), 0, 0},
    [HC_INTERVAL] = {"interval", p_duration, offsetof(gw_health_check_config_t, interval_ms), 1, 0},
    [HC_TIMEOUT] = {"timeout", p_duration, offsetof(gw_health_check_config_t, timeout_ms), 1, 0},
    [HC_HEALTHY] = {"healthy_threshold", p_u32,
                    offsetof(gw_health_check_config_t, healthy_threshold), 1, UINT32_MAX},
    [HC_UNHEALTHY] = {"unhealthy_threshold", p_u32,
                      offsetof(gw_health_check_config_t, unhealthy_threshold), 1, UINT32_MAX},
};

static void p_health(field_ctx_t *c)
{
    gw_health_check_config_t *h = &((gw_upstream_config_t *)c->base)->health_check;
    char where[WHERE_MAX];
    seen_t seen = {0};
    yaml_node_t *at;

    *h = (gw_health_check_config_t){true, astrdup(c->L, "/health"), 2000, 500, 2, 3};
    if (!sub_walk(c, health_fields, NFIELDS(health_fields), h, &seen, where))
        return;
    if (seen.val[HC_PATH] && h->path && h->path[0] != '/')
        fail(c->L, seen.val[HC_PATH], "'path' in %s must start with '/'", where);
    at = either(&seen, HC_TIMEOUT, HC_INTERVAL);
    if (at && h->timeout_ms >= h->interval_ms)
        fail(c->L, at, "'timeout' (%llums) must be less than 'interval' (%llums) in %s",
             (unsigned long long)h->timeout_ms, (unsigned long long)h->interval_ms, where);
}

static const field_t outlier_fields[] = {
    {"consecutive_failures", p_u32, offsetof(gw_outlier_config_t, consecutive_failures), 0,
     UINT32_MAX},
    {"ejection", p_duration, offsetof(gw_outlier_config_t, ejection_ms), 1, 0},
    {"max_ejected", p_ratio, offsetof(gw_outlier_config_t, max_ejected_ppm), 0, 0},
};

static void p_outlier(field_ctx_t *c)
{
    char where[WHERE_MAX];
    seen_t seen = {0};
    sub_walk(c, outlier_fields, NFIELDS(outlier_fields),
             &((gw_upstream_config_t *)c->base)->outlier, &seen, where);
}

#define BRK(m) offsetof(gw_breaker_config_t, m)
enum { BR_OPEN = 6, BR_MAX_OPEN = 7 };
static const field_t breaker_fields[] = {
    {"consecutive_failures", p_u32, BRK(consecutive_failures), 0, UINT32_MAX},
    {"failure_rate", p_ratio, BRK(failure_rate_ppm), 0, 0},
    {"window", p_duration, BRK(window_ms), 1, 0},
    {"min_calls", p_u32, BRK(min_calls), 1, UINT32_MAX},
    {"slow_call_duration", p_duration, BRK(slow_call_duration_ms), 0, 0},
    {"slow_call_rate", p_ratio, BRK(slow_call_rate_ppm), 0, 0},
    [BR_OPEN] = {"open_duration", p_duration, BRK(open_duration_ms), 1, 0},
    [BR_MAX_OPEN] = {"max_open_duration", p_duration, BRK(max_open_duration_ms), 1, 0},
    {"half_open_requests", p_u32, BRK(half_open_requests), 1, UINT32_MAX},
};
_Static_assert(NFIELDS(breaker_fields) <= MAX_FIELDS, "seen_t holds MAX_FIELDS keys");

static void p_breaker(field_ctx_t *c)
{
    gw_breaker_config_t *b = &((gw_upstream_config_t *)c->base)->breaker;
    char where[WHERE_MAX];
    seen_t seen = {0};
    yaml_node_t *at;

    if (!sub_walk(c, breaker_fields, NFIELDS(breaker_fields), b, &seen, where))
        return;
    at = either(&seen, BR_MAX_OPEN, BR_OPEN);
    if (at && b->max_open_duration_ms < b->open_duration_ms)
        fail(c->L, at,
             "'max_open_duration' (%llums) must be at least 'open_duration' (%llums) in %s",
             (unsigned long long)b->max_open_duration_ms, (unsigned long long)b->open_duration_ms,
             where);
}

enum { UP_HOSTS = 0, UP_STATUSES = 4 };
#define UPS(m) offsetof(gw_upstream_config_t, m)
static const field_t upstream_fields[] = {
    [UP_HOSTS] = {"hosts", p_hosts, 0, 0, 0},
    {"connect_timeout", p_duration, UPS(connect_timeout_ms), 1, 0},
    {"timeout", p_duration, UPS(timeout_ms), 1, 0},
    {"max_concurrent", p_u32, UPS(max_concurrent), 1, UINT32_MAX},
    [UP_STATUSES] = {"failure_statuses", p_statuses, 0, 0, 0},
    {"health_check", p_health, 0, 0, 0},
    {"outlier", p_outlier, 0, 0, 0},
    {"breaker", p_breaker, 0, 0, 0},
};

static void upstream_defaults(gw_upstream_config_t *u)
{
    u->connect_timeout_ms = 1000;
    u->timeout_ms = 5000;
    u->max_concurrent = 1000;
    u->outlier = (gw_outlier_config_t){5, 30000, 500000};
    u->breaker = (gw_breaker_config_t){5, 500000, 10000, 20, 2000, 1000000, 5000, 120000, 2};
}

static void default_statuses(loader_t *L, gw_upstream_config_t *u)
{
    static const uint16_t dflt[] = {500, 502, 503, 504};
    u->failure_statuses = arena_array(L->arena, 4, sizeof dflt[0]);
    if (!u->failure_statuses)
        return;
    memcpy(u->failure_statuses, dflt, sizeof dflt);
    u->nfailure_statuses = 4;
}

static ssize_t find_upstream(const gw_config_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (!strcmp(cfg->upstreams[i].name, name))
            return (ssize_t)i;
    return -1;
}

static void load_upstream(loader_t *L, yaml_node_t *k, yaml_node_t *v)
{
    gw_config_t *cfg = L->cfg;
    gw_upstream_config_t *u = &cfg->upstreams[cfg->nupstreams];
    const char *name = key_text(L, k);
    char where[WHERE_MAX];
    seen_t seen = {0};
    walk_t w = WALK(upstream_fields, where);
    ssize_t dup = name ? find_upstream(cfg, name) : -1;

    if (!name || !check_name(L, k, "upstream", name))
        return;
    if (dup >= 0) {
        fail(L, k, "duplicate upstream '%s' (first defined at %u:%u)", name,
             cfg->upstreams[dup].pos.line, cfg->upstreams[dup].pos.col);
        return;
    }
    u->name = astrdup(L, name);
    if (!u->name)
        return; /* out of memory, reported at the end */
    u->pos = srcpos(k);
    upstream_defaults(u);
    cfg->nupstreams++;
    snprintf(where, sizeof where, "upstream '%s'", name);
    if (!want_type(L, v, YAML_MAPPING_NODE, where))
        return;
    walk_map(L, v, &w, u, &seen);
    if (!seen.key[UP_HOSTS])
        fail(L, k, "upstream '%s' needs 'hosts'", name);
    if (!seen.key[UP_STATUSES])
        default_statuses(L, u);
}

static void load_upstreams(loader_t *L, yaml_node_t *v)
{
    gw_config_t *cfg = L->cfg;

    if (!want_type(L, v, YAML_MAPPING_NODE, "'upstreams'"))
        return;
    if (map_len(v) == 0) {
        fail(L, v, "'upstreams' must define at least one upstream");
        return;
    }
    cfg->upstreams = arena_array(L->arena, map_len(v), sizeof *cfg->upstreams);
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start;
         cfg->upstreams && p < v->data.mapping.pairs.top; p++)
        load_upstream(L, node_at(L, p->key), node_at(L, p->value));
}

/* ---- routes ---- */

static void p_path_prefix(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a string");
    if (t && t[0] != '/')
        fail(c->L, c->val, "%s must start with '/'", c->subj);
    else if (t)
        *(char **)c->dst = t;
}

static bool valid_host(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

static void p_host(field_ctx_t *c)
{
    char *t = want_text(c->L, c->val, c->subj, "a host name");
    if (!t)
        return;
    for (char *p = t; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (strchr(t, ':'))
        fail(c->L, c->val, "%s must not include a port ('%s')", c->subj, t);
    else if (!valid_host(t))
        fail(c->L, c->val, "invalid host '%s' for %s (use a DNS name or IPv4 address)", t, c->subj);
    else
        *(char **)c->dst = t;
}

enum { M_PATH_PREFIX = 0 };
static const field_t match_fields[] = {
    [M_PATH_PREFIX] = {"path_prefix", p_path_prefix, offsetof(gw_route_config_t, path_prefix), 0,
                       0},
    {"host", p_host, offsetof(gw_route_config_t, host), 0, 0},
};

static void p_match(field_ctx_t *c)
{
    char where[WHERE_MAX];
    seen_t seen = {0};
    if (sub_walk(c, match_fields, NFIELDS(match_fields), c->base, &seen, where) &&
        !seen.key[M_PATH_PREFIX])
        fail(c->L, c->key, "%s needs 'path_prefix'", c->subj);
}

static bool tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool valid_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!tchar(*s))
            return false;
    return true;
}

static void p_rl_key(field_ctx_t *c)
{
    gw_ratelimit_config_t *r = c->base;
    char *t = want_text(c->L, c->val, c->subj, "a string");

    if (!t)
        return;
    if (!strcmp(t, "global")) {
        r->key = GW_RL_KEY_GLOBAL;
    } else if (!strcmp(t, "client_ip")) {
        r->key = GW_RL_KEY_CLIENT_IP;
    } else if (!strncmp(t, "header:", 7) && valid_token(t + 7)) {
        r->key = GW_RL_KEY_HEADER;
        r->key_header = t + 7;
        for (char *p = r->key_header; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    } else {
        fail(c->L, c->val, "invalid key '%s' for %s (use global, client_ip or header:NAME)", t,
             c->subj);
    }
}

enum { RL_RATE = 0, RL_BURST };
#define RLC(m) offsetof(gw_ratelimit_config_t, m)
static const field_t rl_fields[] = {
    [RL_RATE] = {"rate", p_rate, RLC(rate), 0, 0},
    [RL_BURST] = {"burst", p_u32, RLC(burst), 1, UINT32_MAX},
    {"key", p_rl_key, 0, 0, 0},
    {"max_keys", p_u32, RLC(max_keys), 1, UINT32_MAX},
};

static void p_rate_limit(field_ctx_t *c)
{
    gw_ratelimit_config_t *r = &((gw_route_config_t *)c->base)->rate_limit;
    char where[WHERE_MAX];
    seen_t seen = {0};

    r->enabled = true;
    r->key = GW_RL_KEY_GLOBAL;
    r->max_keys = MAX_BURST_KEYS_DEFAULT;
    if (!sub_walk(c, rl_fields, NFIELDS(rl_fields), r, &seen, where))
        return;
    if (!seen.key[RL_RATE])
        fail(c->L, c->key, "%s needs 'rate'", c->subj);
    if (!seen.key[RL_BURST])
        r->burst = (uint32_t)r->rate.tokens;
}

#define FLT(m) offsetof(gw_fault_config_t, m)
static const field_t abort_fields[] = {
    {"status", p_u16, FLT(abort_status), 200, 599},
    {"percent", p_percent, FLT(abort_ppm), 0, 0},
};
static const field_t delay_fields[] = {
    {"duration", p_duration, FLT(delay_ms), 0, 0},
    {"percent", p_percent, FLT(delay_ppm), 0, 0},
};

/* abort and delay each need both of their keys: a half-written fault is a mistake. */
static void fault_part(field_ctx_t *c, const field_t *fields)
{
    char where[WHERE_MAX];
    seen_t seen = {0};

    if (!sub_walk(c, fields, 2, c->base, &seen, where))
        return;
    for (int i = 0; i < 2; i++)
        if (!seen.key[i])
            fail(c->L, c->key, "%s needs '%s'", c->subj, fields[i].key);
}

static void p_abort(field_ctx_t *c)
{
    fault_part(c, abort_fields);
}

static void p_delay(field_ctx_t *c)
{
    fault_part(c, delay_fields);
}

static const field_t fault_fields[] = {
    {"abort", p_abort, 0, 0, 0},
    {"delay", p_delay, 0, 0, 0},
};

static void p_fault(field_ctx_t *c)
{
    char where[WHERE_MAX];
    seen_t seen = {0};
    sub_walk(c, fault_fields, NFIELDS(fault_fields), &((gw_route_config_t *)c->base)->fault, &seen,
             where);
}

static void p_route_upstream(field_ctx_t *c)
{
    gw_route_config_t *r = c->base;
    char *t = want_text(c->L, c->val, c->subj, "an upstream name");
    ssize_t i = t ? find_upstream(c->L->cfg, t) : -1;

    if (t && i < 0) {
        fail(c->L, c->val, "upstream '%s' in %s is not defined", t, c->where);
        return;
    }
    r->upstream_name = t;
    r->upstream_index = (size_t)i;
}

enum { RT_NAME = 0, RT_MATCH, RT_UPSTREAM, RT_TIMEOUT };
static const field_t route_fields[] = {
    [RT_NAME] = {"name", NULL, 0, 0, 0},
    [RT_MATCH] = {"match", p_match, 0, 0, 0},
    [RT_UPSTREAM] = {"upstream", p_route_upstream, 0, 0, 0},
    [RT_TIMEOUT] = {"timeout", p_duration, offsetof(gw_route_config_t, timeout_ms), 1, 0},
    {"rate_limit", p_rate_limit, 0, 0, 0},
    {"fault", p_fault, 0, 0, 0},
};

/* The route's name, checked and unique; NULL (reported) otherwise. */
static char *route_name(loader_t *L, yaml_node_t *item, size_t idx)
{
    yaml_node_t *n = map_get(L, item, "name");
    char subj[64];
    char *name;

    snprintf(subj, sizeof subj, "'name' in route #%zu", idx + 1);
    if (!n) {
        fail(L, item, "route #%zu needs a 'name'", idx + 1);
        return NULL;
    }
    name = want_text(L, n, subj, "a string");
    if (!name || !check_name(L, n, "route", name))
        return NULL;
    for (size_t i = 0; i < L->cfg->nroutes; i++) {
        const gw_route_config_t *o = &L->cfg->routes[i];
        if (o->name && !strcmp(o->name, name)) {
            fail(L, n, "duplicate route name '%s' (first defined at %u:%u)", name, o->pos.line,
                 o->pos.col);
            return NULL;
        }
    }
    return name;
}

static void route_required(loader_t *L, yaml_node_t *item, const seen_t *seen, const char *where)
{
    if (!seen->key[RT_MATCH])
        fail(L, item, "%s needs 'match'", where);
    if (!seen->key[RT_UPSTREAM])
        fail(L, item, "%s needs 'upstream'", where);
}

static void load_route(loader_t *L, yaml_node_t *item, size_t idx)
{
    gw_route_config_t *r = &L->cfg->routes[L->cfg->nroutes];
    char where[WHERE_MAX];
    seen_t seen = {0};
    walk_t w = WALK(route_fields, where);

    snprintf(where, sizeof where, "route #%zu", idx + 1);
    if (!want_type(L, item, YAML_MAPPING_NODE, where))
        return;
    r->name = route_name(L, item, idx);
    r->pos = srcpos(item);
    r->upstream_index = SIZE_MAX;
    if (r->name)
        snprintf(where, sizeof where, "route '%s'", r->name);
    walk_map(L, item, &w, r, &seen);
    route_required(L, item, &seen, where);
    if (!seen.key[RT_TIMEOUT] && r->upstream_index != SIZE_MAX)
        r->timeout_ms = L->cfg->upstreams[r->upstream_index].timeout_ms;
    L->cfg->nroutes++;
}

static void load_routes(loader_t *L, yaml_node_t *v)
{
    gw_config_t *cfg = L->cfg;
    size_t idx = 0;

    if (!want_type(L, v, YAML_SEQUENCE_NODE, "'routes'"))
        return;
    if (seq_len(v) == 0) {
        fail(L, v, "'routes' must define at least one route");
        return;
    }
    cfg->routes = arena_array(L->arena, seq_len(v), sizeof *cfg->routes);
    for (yaml_node_item_t *it = v->data.sequence.items.start;
         cfg->routes && it < v->data.sequence.items.top; it++)
        load_route(L, node_at(L, *it), idx++);
}

/* ---- alerts: channels ---- */

enum {
    CH_TYPE = 0,
    CH_URL,
    CH_SECRET,
    CH_ROUTING_KEY,
    CH_ACCOUNT_SID,
    CH_AUTH_TOKEN,
    CH_FROM,
    CH_TO,
    CH_SMTP_URL,
    CH_API_KEY,
    CH_HEADERS,
    CH_RATE_LIMIT,
};
#define CH_ALWAYS (BIT(CH_TYPE) | BIT(CH_RATE_LIMIT))

typedef struct channel_type {
    const char *name;
    uint32_t allowed, required; /* BIT(CH_*) */
    const char *default_url;
} channel_type_t;

static const channel_type_t channel_types[GW_CHANNEL_TYPE_COUNT] = {
    [GW_CHANNEL_SLACK] = {"slack", BIT(CH_URL), BIT(CH_URL), NULL},
    /* dingtalk and wecom: optional `to` = mobile numbers to @mention */
    [GW_CHANNEL_DINGTALK] = {"dingtalk", BIT(CH_URL) | BIT(CH_SECRET) | BIT(CH_TO), BIT(CH_URL),
                             NULL},
    [GW_CHANNEL_FEISHU] = {"feishu", BIT(CH_URL) | BIT(CH_SECRET), BIT(CH_URL), NULL},
    [GW_CHANNEL_WECOM] = {"wecom", BIT(CH_URL) | BIT(CH_TO), BIT(CH_URL), NULL},
    [GW_CHANNEL_PAGERDUTY] = {"pagerduty", BIT(CH_ROUTING_KEY) | BIT(CH_URL), BIT(CH_ROUTING_KEY),
                              "https://events.pagerduty.com/v2/enqueue"},
    [GW_CHANNEL_TWILIO] = {"twilio",
                           BIT(CH_ACCOUNT_SID) | BIT(CH_AUTH_TOKEN) | BIT(CH_FROM) | BIT(CH_TO) |
                               BIT(CH_URL),
                           BIT(CH_ACCOUNT_SID) | BIT(CH_AUTH_TOKEN) | BIT(CH_FROM) | BIT(CH_TO),
                           NULL},
    [GW_CHANNEL_EMAIL] = {"email", BIT(CH_SMTP_URL) | BIT(CH_FROM) | BIT(CH_TO),
                          BIT(CH_SMTP_URL) | BIT(CH_FROM) | BIT(CH_TO), NULL},
    [GW_CHANNEL_TEAMS] = {"teams", BIT(CH_URL), BIT(CH_URL), NULL},
    [GW_CHANNEL_OPSGENIE] = {"opsgenie", BIT(CH_API_KEY) | BIT(CH_URL), BIT(CH_API_KEY),
                             "https://api.opsgenie.com"},
    [GW_CHANNEL_ALERTMANAGER] = {"alertmanager", BIT(CH_URL), BIT(CH_URL), NULL},
    [GW_CHANNEL_WEBHOOK] = {"webhook", BIT(CH_URL) | BIT(CH_HEADERS), BIT(CH_URL), NULL},
    [GW_CHANNEL_CONSOLE] = {"console", 0, 0, NULL},
};

#define CHANNEL_TYPE_LIST                                                                          \
    "slack, dingtalk, feishu, wecom, pagerduty, twilio, email, teams, opsgenie, alertmanager, "    \
    "webhook, console"

static void p_to(field_ctx_t *c)
{
    gw_channel_config_t *ch = c->base;
    string_list(c, &ch->to, &ch->nto);
}

static bool header_value_ok(const char *v)
{
    return !strpbrk(v, "\r\n");
}

/* One "Name: value" entry of a webhook's headers; false when it is not added. */
static bool header_entry(loader_t *L, yaml_node_t *k, yaml_node_t *v, gw_channel_config_t *ch,
                         const char *subj)
{
    const char *name = key_text(L, k);
    char *val;

    if (!name)
        return false;
    if (!valid_token(name)) {
        fail(L, k, "invalid header name '%s' in %s", name, subj);
        return false;
    }
    for (size_t i = 0; i < ch->nheaders; i++)
        if (!strcasecmp(ch->headers[i].key, name)) {
            fail(L, k, "duplicate header '%s' in %s", name, subj);
            return false;
        }
    val = want_text(L, v, subj, "a string");
    if (val && !header_value_ok(val))
        fail(L, v, "header '%s' in %s must not contain a line break", name, subj);
    if (!val || !header_value_ok(val))
        return false;
    ch->headers[ch->nheaders] = (gw_kv_t){astrdup(L, name), val};
    return ch->headers[ch->nheaders].key != NULL;
}

static void p_headers(field_ctx_t *c)
{
    gw_channel_config_t *ch = c->base;

    if (!want_type(c->L, c->val, YAML_MAPPING_NODE, c->subj))
        return;
    ch->headers = arena_array(c->L->arena, map_len(c->val) + 1, sizeof *ch->headers);
    for (yaml_node_pair_t *p = c->val->data.mapping.pairs.start;
         ch->headers && p < c->val->data.mapping.pairs.top; p++)
        if (header_entry(c->L, node_at(c->L, p->key), node_at(c->L, p->value), ch, c->subj))
            ch->nheaders++;
}

#define CHC(m) offsetof(gw_channel_config_t, m)
static const field_t channel_fields[] = {
    [CH_TYPE] = {"type", NULL, 0, 0, 0},
    [CH_URL] = {"url", p_url, CHC(url), 0, 0},
    [CH_SECRET] = {"secret", p_optional, CHC(secret), 0, 0},
    [CH_ROUTING_KEY] = {"routing_key", p_nonempty, CHC(routing_key), 0, 0},
    [CH_ACCOUNT_SID] = {"account_sid", p_nonempty, CHC(account_sid), 0, 0},
    [CH_AUTH_TOKEN] = {"auth_token", p_nonempty, CHC(auth_token), 0, 0},
    [CH_FROM] = {"from", p_nonempty, CHC(from), 0, 0},
    [CH_TO] = {"to", p_to, 0, 0, 0},
    [CH_SMTP_URL] = {"smtp_url", p_smtp_url, CHC(smtp_url), 0, 0},
    [CH_API_KEY] = {"api_key", p_nonempty, CHC(api_key), 0, 0},
    [CH_HEADERS] = {"headers", p_headers, 0, 0, 0},
    [CH_RATE_LIMIT] = {"rate_limit", p_rate, CHC(rate_limit), 0, 0},
};
_Static_assert(NFIELDS(channel_fields) <= MAX_FIELDS, "seen_t holds MAX_FIELDS keys");

static ssize_t find_channel(const gw_alerts_config_t *a, const char *name)
{
    for (size_t i = 0; i < a->nchannels; i++)
        if (!strcmp(a->channels[i].name, name))
            return (ssize_t)i;
    return -1;
}

/* The channel's type from its `type` key; -1 (reported) when missing or unknown. */
static int channel_type(loader_t *L, yaml_node_t *k, yaml_node_t *v, const char *where)
{
    yaml_node_t *tn = map_get(L, v, "type");
    char subj[WHERE_MAX + 16];
    const char *t;

    if (!tn) {
        fail(L, k, "%s needs a 'type' (one of " CHANNEL_TYPE_LIST ")", where);
        return -1;
    }
    snprintf(subj, sizeof subj, "'type' in %s", where);
    t = want_text(L, tn, subj, "a string");
    for (int i = 0; t && i < GW_CHANNEL_TYPE_COUNT; i++)
        if (!strcmp(t, channel_types[i].name))
            return i;
    if (t)
        fail(L, tn, "unknown channel type '%s' in %s (use one of " CHANNEL_TYPE_LIST ")", t, where);
    return -1;
}

static void channel_required(loader_t *L, yaml_node_t *k, gw_channel_config_t *ch,
                             const seen_t *seen, const char *where)
{
    const channel_type_t *ct = &channel_types[ch->type];

    for (size_t i = 0; i < NFIELDS(channel_fields); i++)
        if ((ct->required & BIT(i)) && !seen->key[i])
            fail(L, k, "%s of type %s needs '%s'", where, ct->name, channel_fields[i].key);
    if (!ch->url && ct->default_url)
        ch->url = astrdup(L, ct->default_url);
}

static void channel_body(loader_t *L, yaml_node_t *k, yaml_node_t *v, gw_channel_config_t *ch,
                         const char *where)
{
    walk_t w = WALK(channel_fields, where);
    int type = channel_type(L, k, v, where);
    char kind[40];
    seen_t seen = {0};

    if (type >= 0) {
        ch->type = (gw_channel_type_t)type;
        w.allowed = channel_types[type].allowed | CH_ALWAYS;
        snprintf(kind, sizeof kind, "of type %s", channel_types[type].name);
        w.kind = kind;
    }
    walk_map(L, v, &w, ch, &seen);
    if (type >= 0)
        channel_required(L, k, ch, &seen, where);
}

static void load_channel(loader_t *L, yaml_node_t *k, yaml_node_t *v)
{
    gw_alerts_config_t *a = &L->cfg->alerts;
    gw_channel_config_t *ch = &a->channels[a->nchannels];
    const char *name = key_text(L, k);
    char where[WHERE_MAX];
    ssize_t dup = name ? find_channel(a, name) : -1;

    if (!name || !check_name(L, k, "channel", name))
        return;
    if (dup >= 0) {
        fail(L, k, "duplicate channel '%s' (first defined at %u:%u)", name,
             a->channels[dup].pos.line, a->channels[dup].pos.col);
        return;
    }
    ch->name = astrdup(L, name);
    if (!ch->name)
        return; /* out of memory, reported at the end */
    ch->pos = srcpos(k);
    a->nchannels++; /* even when its body is bad: tiers naming it get no second error */
    snprintf(where, sizeof where, "channel '%s'", name);
    if (want_type(L, v, YAML_MAPPING_NODE, where))
        channel_body(L, k, v, ch, where);
}

static void load_channels(loader_t *L, yaml_node_t *v)
{
    gw_alerts_config_t *a = &L->cfg->alerts;

    if (!want_type(L, v, YAML_MAPPING_NODE, "'channels' in alerts"))
        return;
    if (map_len(v) == 0) {
        fail(L, v, "'channels' in alerts must define at least one channel");
        return;
    }
    a->channels = arena_array(L->arena, map_len(v), sizeof *a->channels);
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start;
         a->channels && p < v->data.mapping.pairs.top; p++)
        load_channel(L, node_at(L, p->key), node_at(L, p->value));
}

/* ---- alerts: tiers ---- */

static const char *const tier_names[GW_TIER_COUNT] = {"P0", "P1", "P2"};

static int tier_index(const char *s)
{
    for (int i = 0; i < GW_TIER_COUNT; i++)
        if (!strcmp(s, tier_names[i]))
            return i;
    return -1;
}

/* Resolves one channel name of a tier; false (reported) when undefined or listed twice. */
static bool tier_channel(loader_t *L, const yaml_node_t *n, gw_tier_config_t *t, const char *where,
                         size_t *out)
{
    const gw_alerts_config_t *a = &L->cfg->alerts;
    char subj[WHERE_MAX + 16];
    char *name;
    ssize_t i;

    snprintf(subj, sizeof subj, "'channels' in %s", where);
    name = want_text(L, n, subj, "a channel name");
    i = name ? find_channel(a, name) : -1;
    if (name && i < 0)
        fail(L, n, "channel '%s' in %s is not defined", name, where);
    if (i < 0)
        return false;
    for (size_t j = 0; j < t->nchannels; j++)
        if (t->channels[j] == (size_t)i) {
            fail(L, n, "channel '%s' is listed twice in %s", name, where);
            return false;
        }
    *out = (size_t)i;
    return true;
}

static void p_tier_channels(field_ctx_t *c)
{
    gw_tier_config_t *t = c->base;

    if (!want_type(c->L, c->val, YAML_SEQUENCE_NODE, c->subj))
        return;
    if (seq_len(c->val) == 0) {
        fail(c->L, c->val, "%s must name at least one channel", c->subj);
        return;
    }
    t->channels = arena_array(c->L->arena, seq_len(c->val), sizeof *t->channels);
    for (yaml_node_item_t *it = c->val->data.sequence.items.start;
         t->channels && it < c->val->data.sequence.items.top; it++)
        if (tier_channel(c->L, node_at(c->L, *it), t, c->where, &t->channels[t->nchannels]))
            t->nchannels++;
}

enum { TR_CHANNELS = 0, TR_REPEAT, TR_ESCALATE };
#define TRC(m) offsetof(gw_tier_config_t, m)
static const field_t tier_fields[] = {
    [TR_CHANNELS] = {"channels", p_tier_channels, 0, 0, 0},
    [TR_REPEAT] = {"repeat", p_duration, TRC(repeat_ms), 0, 0},
    [TR_ESCALATE] = {"escalate_after", p_duration, TRC(escalate_after_ms), 0, 0},
    {"group_wait", p_duration, TRC(group_wait_ms), 0, 0},
};

/* Loads one tier; returns its escalate_after value node (NULL when absent). */
static yaml_node_t *load_tier(loader_t *L, yaml_node_t *k, yaml_node_t *v, int t)
{
    gw_tier_config_t *tc = &L->cfg->alerts.tiers[t];
    char where[WHERE_MAX];
    seen_t seen = {0};
    walk_t w = WALK(tier_fields, where);

    tc->defined = true;
    snprintf(where, sizeof where, "tier %s", tier_names[t]);
    if (!want_type(L, v, YAML_MAPPING_NODE, where))
        return NULL;
    walk_map(L, v, &w, tc, &seen);
    if (!seen.key[TR_CHANNELS])
        fail(L, k, "%s needs 'channels'", where);
    if (t == GW_TIER_P0 && seen.key[TR_ESCALATE])
        fail(L, seen.key[TR_ESCALATE], "P0 is the top tier and cannot escalate (use 'repeat')");
    return seen.val[TR_ESCALATE];
}

/* Escalation goes one tier up: P2 -> P1 -> P0; the target must exist. */
static void check_escalation(loader_t *L, yaml_node_t *const esc[GW_TIER_COUNT])
{
    const gw_tier_config_t *tiers = L->cfg->alerts.tiers;
    for (int t = GW_TIER_P1; t < GW_TIER_COUNT; t++)
        if (esc[t] && tiers[t].escalate_after_ms && !tiers[t - 1].defined)
            fail(L, esc[t], "tier %s escalates to %s, which is not defined", tier_names[t],
                 tier_names[t - 1]);
}

static void load_tiers(loader_t *L, yaml_node_t *v)
{
    yaml_node_t *esc[GW_TIER_COUNT] = {0};

    if (!want_type(L, v, YAML_MAPPING_NODE, "'tiers' in alerts"))
        return;
    if (map_len(v) == 0)
        fail(L, v, "'tiers' in alerts must define at least one tier");
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(L, p->key);
        const char *name = key_text(L, k);
        int t = name ? tier_index(name) : -1;
        if (name && t < 0)
            fail(L, k, "unknown tier '%s' in alerts tiers (tiers are P0, P1, P2)", name);
        else if (t >= 0 && L->cfg->alerts.tiers[t].defined)
            fail(L, k, "duplicate tier '%s' in alerts tiers", name);
        else if (t >= 0)
            esc[t] = load_tier(L, k, node_at(L, p->value), t);
    }
    check_escalation(L, esc);
}

/* ---- alerts: rules ---- */

static const char *const event_names[GW_EVENT_KIND_COUNT] = {
    "breaker_open", "no_healthy_hosts", "host_down",  "worker_crash",  "worker_stall",
    "rate_limited", "delivery_failing", "crash_loop", "handler_fault", "alert_store_degraded",
};

static const gw_tier_t default_rule_tier[GW_EVENT_KIND_COUNT] = {
    GW_TIER_P1, GW_TIER_P0, GW_TIER_P2, GW_TIER_P0, GW_TIER_P1,
    GW_TIER_P2, GW_TIER_P1, GW_TIER_P0, GW_TIER_P2, GW_TIER_P1,
};

#define RATE_LIMITED_RATIO_DEFAULT 200000u /* 20% */
#define RATE_LIMITED_FOR_DEFAULT 60000u    /* 1m */

#define EVENT_LIST                                                                                 \
    "breaker_open, no_healthy_hosts, host_down, worker_crash, worker_stall, rate_limited, "        \
    "delivery_failing, crash_loop, handler_fault, alert_store_degraded"

const char *gw_event_kind_name(gw_event_kind_t k)
{
    return (unsigned)k < GW_EVENT_KIND_COUNT ? event_names[k] : NULL;
}

static int event_index(const char *s)
{
    for (int i = 0; i < GW_EVENT_KIND_COUNT; i++)
        if (!strcmp(s, event_names[i]))
            return i;
    return -1;
}

/* "P0".."P2" naming a defined tier, or "off" (the rule raises nothing). */
static void rule_tier(loader_t *L, const yaml_node_t *n, const char *subj, gw_rule_config_t *r)
{
    char *t = want_text(L, n, subj, "a tier");
    int i = t ? tier_index(t) : -1;

    if (!t)
        return;
    if (!strcmp(t, "off")) {
        r->defined = false;
    } else if (i < 0) {
        fail(L, n, "invalid tier '%s' for %s (use P0, P1, P2 or off)", t, subj);
    } else if (!L->cfg->alerts.tiers[i].defined) {
        fail(L, n, "%s: tier %s is not defined in alerts tiers", subj, t);
    } else {
        r->defined = true;
        r->tier = (gw_tier_t)i;
    }
}

static void p_rule_tier(field_ctx_t *c)
{
    rule_tier(c->L, c->val, c->subj, c->base);
}

enum { RU_TIER = 0 };
static const field_t rule_fields[] = {
    [RU_TIER] = {"tier", p_rule_tier, 0, 0, 0},
    {"ratio", p_ratio, offsetof(gw_rule_config_t, ratio_ppm), 0, 0},
    {"for", p_duration, offsetof(gw_rule_config_t, for_ms), 0, 0},
};

static void rule_map(loader_t *L, yaml_node_t *k, yaml_node_t *v, int e, const char *where)
{
    walk_t w = WALK(rule_fields, where);
    seen_t seen = {0};

    if (e != GW_EVENT_RATE_LIMITED)
        w.allowed = BIT(RU_TIER);
    walk_map(L, v, &w, &L->cfg->alerts.rules[e], &seen);
    if (!seen.key[RU_TIER])
        fail(L, k, "%s needs 'tier'", where);
}

static void load_rule(loader_t *L, yaml_node_t *k, yaml_node_t *v, bool *set)
{
    const char *name = key_text(L, k);
    int e = name ? event_index(name) : -1;
    gw_rule_config_t *r;
    char where[WHERE_MAX];

    if (name && e < 0)
        fail(L, k, "unknown rule event '%s' (use one of " EVENT_LIST ")", name);
    if (e < 0)
        return;
    if (set[e]) {
        fail(L, k, "duplicate rule '%s'", name);
        return;
    }
    set[e] = true;
    r = &L->cfg->alerts.rules[e];
    if (e == GW_EVENT_RATE_LIMITED)
        *r = (gw_rule_config_t){false, GW_TIER_P2, RATE_LIMITED_RATIO_DEFAULT,
                                RATE_LIMITED_FOR_DEFAULT};
    snprintf(where, sizeof where, "rule '%s'", name);
    if (v->type == YAML_MAPPING_NODE)
        rule_map(L, k, v, e, where);
    else if (v->type == YAML_SCALAR_NODE && !is_null(v))
        rule_tier(L, v, where, r);
    else
        fail(L, v, "%s must be a tier (P0, P1, P2 or off) or a mapping, not %s", where,
             kind_name(v));
}

/* Rules the config does not set get their defaults; at is where to report an undefined tier. */
static void default_rules(loader_t *L, const bool *set, const yaml_node_t *at)
{
    gw_alerts_config_t *a = &L->cfg->alerts;

    if (!a->tiers[0].defined && !a->tiers[1].defined && !a->tiers[2].defined)
        return; /* already reported: alerts without tiers */
    for (int e = 0; e < GW_EVENT_KIND_COUNT; e++) {
        gw_tier_t t = default_rule_tier[e];
        if (set[e])
            continue;
        /* The alert about alerting itself goes to the most urgent defined tier when its default
         * is missing: refusing the config for it would only push people to turn it off. */
        for (int i = 0; e == GW_EVENT_STORE_DEGRADED && !a->tiers[t].defined && i < 3; i++)
            t = (gw_tier_t)i;
        if (!a->tiers[t].defined) {
            fail_at(L, at ? at->start_mark : (yaml_mark_t){0, 0, 0},
                    "rule '%s' is not set and its default tier %s is not defined (define tier "
                    "%s, or set rules.%s to a defined tier or 'off')",
                    event_names[e], tier_names[t], tier_names[t], event_names[e]);
            continue;
        }
        a->rules[e] = (gw_rule_config_t){true, t, 0, 0};
        if (e == GW_EVENT_RATE_LIMITED) {
            a->rules[e].ratio_ppm = RATE_LIMITED_RATIO_DEFAULT;
            a->rules[e].for_ms = RATE_LIMITED_FOR_DEFAULT;
        }
    }
}

static void load_rules(loader_t *L, yaml_node_t *k, yaml_node_t *v)
{
    bool set[GW_EVENT_KIND_COUNT] = {0};

    if (v && want_type(L, v, YAML_MAPPING_NODE, "'rules' in alerts"))
        for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++)
            load_rule(L, node_at(L, p->key), node_at(L, p->value), set);
    default_rules(L, set, k ? k : L->alerts_key);
}

/* ---- alerts: the section ---- */

enum { DL_BACKOFF = 2, DL_MAX_BACKOFF = 3 };
#define DLC(m) offsetof(gw_delivery_config_t, m)
static const field_t delivery_fields[] = {
    {"max_attempts", p_u32, DLC(max_attempts), 0, UINT32_MAX},
    {"max_age", p_duration, DLC(max_age_ms), 1, 0},
    [DL_BACKOFF] = {"backoff", p_duration, DLC(backoff_ms), 1, 0},
    [DL_MAX_BACKOFF] = {"max_backoff", p_duration, DLC(max_backoff_ms), 1, 0},
};

static void p_delivery(field_ctx_t *c)
{
    gw_delivery_config_t *d = &((gw_alerts_config_t *)c->base)->delivery;
    char where[WHERE_MAX];
    seen_t seen = {0};
    yaml_node_t *at;

    if (!sub_walk(c, delivery_fields, NFIELDS(delivery_fields), d, &seen, where))
        return;
    at = either(&seen, DL_MAX_BACKOFF, DL_BACKOFF);
    if (at && d->max_backoff_ms < d->backoff_ms)
        fail(c->L, at, "'max_backoff' must be at least 'backoff' in %s", where);
}

enum { AL_URL = 0, AL_CHANNELS, AL_TIERS, AL_RULES };
static const field_t alerts_fields[] = {
    [AL_URL] = {"external_url", p_url, offsetof(gw_alerts_config_t, external_url), 0, 0},
    [AL_CHANNELS] = {"channels", NULL, 0, 0, 0},
    [AL_TIERS] = {"tiers", NULL, 0, 0, 0},
    [AL_RULES] = {"rules", NULL, 0, 0, 0},
    {"delivery", p_delivery, 0, 0, 0},
    {"retention", p_duration, offsetof(gw_alerts_config_t, retention_ms), 1, 0},
};

/* No `alerts` section: everything to one console channel (SPEC section 1). */
static void default_alerts(loader_t *L)
{
    static const uint64_t repeat[] = {300000, 0, 0}, escalate[] = {0, 900000, 3600000};
    gw_alerts_config_t *a = &L->cfg->alerts;
    bool set[GW_EVENT_KIND_COUNT] = {0};

    a->channels = arena_array(L->arena, 1, sizeof *a->channels);
    if (!a->channels)
        return;
    a->channels[0] =
        (gw_channel_config_t){.name = astrdup(L, "console"), .type = GW_CHANNEL_CONSOLE};
    a->nchannels = 1;
    for (int t = 0; t < GW_TIER_COUNT; t++) {
        gw_tier_config_t *tc = &a->tiers[t];
        tc->defined = true;
        tc->channels = arena_array(L->arena, 1, sizeof *tc->channels);
        tc->nchannels = tc->channels ? 1 : 0;
        if (tc->channels)
            tc->channels[0] = 0;
        tc->repeat_ms = repeat[t];
        tc->escalate_after_ms = escalate[t];
    }
    default_rules(L, set, NULL);
}

static void load_alerts(loader_t *L, yaml_node_t *k, yaml_node_t *v)
{
    gw_alerts_config_t *a = &L->cfg->alerts;
    walk_t w = WALK(alerts_fields, "alerts");
    seen_t seen = {0};

    a->delivery = (gw_delivery_config_t){0, 86400000, 1000, 300000};
    a->retention_ms = 30ull * 86400000;
    if (!k) {
        default_alerts(L);
        return;
    }
    L->alerts_key = k;
    if (!want_type(L, v, YAML_MAPPING_NODE, "'alerts'"))
        return;
    walk_map(L, v, &w, a, &seen);
    if (seen.val[AL_CHANNELS])
        load_channels(L, seen.val[AL_CHANNELS]);
    else
        fail(L, k, "'alerts' needs 'channels'");
    if (seen.val[AL_TIERS])
        load_tiers(L, seen.val[AL_TIERS]);
    else
        fail(L, k, "'alerts' needs 'tiers'");
    load_rules(L, seen.key[AL_RULES], seen.val[AL_RULES]);
}

/* ---- the top level ---- */

enum { T_LISTEN = 0, T_UPSTREAMS = 6, T_ROUTES, T_ALERTS = 9 };
#define CFG(m) offsetof(gw_config_t, m)
static const field_t top_fields[] = {
    [T_LISTEN] = {"listen", p_listen, 0, 0, 0},
    {"workers", p_u32, CFG(workers), 1, 256},
    {"shutdown_timeout", p_duration, CFG(shutdown_timeout_ms), 0, 0},
    {"state_dir", p_nonempty, CFG(state_dir), 0, 0},
    {"admin", p_admin, 0, 0, 0},
    {"watchdog", p_watchdog, 0, 0, 0},
    [T_UPSTREAMS] = {"upstreams", NULL, 0, 0, 0},
    [T_ROUTES] = {"routes", NULL, 0, 0, 0},
    {"debug", p_debug, 0, 0, 0},
    [T_ALERTS] = {"alerts", NULL, 0, 0, 0},
};
_Static_assert(NFIELDS(top_fields) <= MAX_FIELDS, "seen_t holds MAX_FIELDS keys");

static bool default_addr(loader_t *L, const char *text, gw_addr_t *a)
{
    char host[64];
    if (gw_parse_addr(text, host, sizeof host, &a->port, &a->family) < 0)
        return false;
    a->text = astrdup(L, text);
    a->host = astrdup(L, host);
    return a->text && a->host;
}

static uint32_t default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (uint32_t)n;
}

static void top_defaults(loader_t *L)
{
    gw_config_t *cfg = L->cfg;

    cfg->workers = default_workers();
    cfg->shutdown_timeout_ms = 10000;
    cfg->state_dir = astrdup(L, "./var");
    cfg->stall_after_ms = 2000;
    default_addr(L, "127.0.0.1:9901", &cfg->admin_listen);
}

static void default_listen(loader_t *L)
{
    gw_config_t *cfg = L->cfg;
    cfg->listen = arena_array(L->arena, 1, sizeof *cfg->listen);
    if (cfg->listen && default_addr(L, "127.0.0.1:8080", &cfg->listen[0]))
        cfg->nlisten = 1;
}

static void load_root(loader_t *L, yaml_node_t *root)
{
    walk_t w = WALK(top_fields, NULL);
    seen_t seen = {0};

    top_defaults(L);
    if (root->type != YAML_MAPPING_NODE) {
        fail(L, root, "the config must be a mapping of keys, not %s", kind_name(root));
        return;
    }
    walk_map(L, root, &w, L->cfg, &seen);
    if (!seen.key[T_LISTEN])
        default_listen(L);
    if (seen.val[T_UPSTREAMS])
        load_upstreams(L, seen.val[T_UPSTREAMS]);
    else
        fail(L, root, "the config needs 'upstreams' (at least one)");
    if (seen.val[T_ROUTES])
        load_routes(L, seen.val[T_ROUTES]);
    else
        fail(L, root, "the config needs 'routes' (at least one)");
    load_alerts(L, seen.key[T_ALERTS], seen.val[T_ALERTS]);
}

/* ---- YAML parsing ---- */

/* Line/column of a byte offset, for reader errors (which carry no mark). */
static yaml_mark_t mark_of_offset(const char *text, size_t len, size_t off)
{
    yaml_mark_t m = {off, 0, 0};
    for (size_t i = 0; i < off && i < len; i++) {
        if (text[i] == '\n') {
            m.line++;
            m.column = 0;
        } else {
            m.column++;
        }
    }
    return m;
}

static void yaml_error(loader_t *L, const yaml_parser_t *p, const char *text, size_t len)
{
    yaml_mark_t m = p->problem_mark;
    const char *what = p->problem ? p->problem : "malformed YAML";

    if (p->error == YAML_MEMORY_ERROR) {
        L->arena->oom = true;
        return;
    }
    if (p->error == YAML_READER_ERROR)
        m = mark_of_offset(text, len, p->problem_offset);
    if (p->context)
        fail_at(L, m, "YAML syntax error: %s (%s at %u:%u)", what, p->context,
                (unsigned)p->context_mark.line + 1, (unsigned)p->context_mark.column + 1);
    else
        fail_at(L, m, "YAML syntax error: %s", what);
}

/* A second document in the stream is an error: it would be silently ignored otherwise. */
static void check_single_document(loader_t *L, yaml_parser_t *p, const char *text, size_t len)
{
    yaml_document_t extra;
    yaml_node_t *root;

    if (!yaml_parser_load(p, &extra)) {
        yaml_error(L, p, text, len);
        return;
    }
    root = yaml_document_get_root_node(&extra);
    if (root && !is_null(root))
        fail(L, root, "only one YAML document is allowed in a config file");
    yaml_document_delete(&extra);
}

static int parse_yaml(loader_t *L, const char *text, size_t len)
{
    yaml_parser_t p;

    if (!yaml_parser_initialize(&p)) {
        L->arena->oom = true;
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &L->doc)) {
        yaml_error(L, &p, text, len);
        yaml_parser_delete(&p);
        return -1;
    }
    L->have_doc = true;
    check_single_document(L, &p, text, len);
    yaml_parser_delete(&p);
    return 0;
}

/* ---- entry points ---- */

static int loader_init(loader_t *L, const char *name)
{
    memset(L, 0, sizeof *L);
    L->file = name ? name : "<config>";
    gw_diag_init(&L->diag);
    L->arena = calloc(1, sizeof *L->arena);
    if (!L->arena)
        return -1;
    L->cfg = arena_alloc(L->arena, sizeof *L->cfg);
    if (!L->cfg) {
        arena_free(L->arena);
        return -1;
    }
    L->cfg->arena = L->arena;
    L->cfg->source = astrdup(L, L->file);
    return 0;
}

static int loader_finish(loader_t *L, gw_config_t **out, gw_diag_t *diag)
{
    if (L->have_doc)
        yaml_document_delete(&L->doc);
    if (L->arena->oom) {
        gw_diag_add(&L->diag, L->file, 0, 0, "out of memory");
        L->nerrors++;
    }
    if (L->nerrors == 0) {
        *out = L->cfg;
        return 0;
    }
    gw_cfg_diag_sort(&L->diag, strlen(L->file));
    gw_cfg_diag_move(diag, &L->diag);
    arena_free(L->arena);
    return -1;
}

int gw_config_load_string(const char *name, const char *text, size_t len, gw_config_t **out,
                          gw_diag_t *diag)
{
    loader_t L;

    *out = NULL;
    if (loader_init(&L, name) < 0) {
        gw_diag_add(diag, name ? name : "<config>", 0, 0, "out of memory");
        return -1;
    }
    if (parse_yaml(&L, text, len) == 0) {
        yaml_node_t *root = yaml_document_get_root_node(&L.doc);
        if (root)
            load_root(&L, root);
        else
            fail_at(&L, (yaml_mark_t){0, 0, 0}, "the config is empty");
    }
    return loader_finish(&L, out, diag);
}

/* Reads all of fd into a new buffer of less than FILE_MAX_BYTES; returns 0 or an errno value. */
static int read_fd(int fd, char **text, size_t *len)
{
    size_t n = 0, cap = 0;
    char *buf = NULL;

    for (;;) {
        if (n == cap) {
            char *nb = cap < FILE_MAX_BYTES ? realloc(buf, cap ? cap * 2 : 4096) : NULL;
            if (!nb) {
                free(buf);
                return cap < FILE_MAX_BYTES ? ENOMEM : EFBIG;
            }
            buf = nb;
            cap = cap ? cap * 2 : 4096;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r == 0)
            break;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            free(buf);
            return err;
        }
        n += (size_t)r;
    }
    *text = buf;
    *len = n;
    return 0;
}

static int read_file(const char *path, char **text, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), err;
    if (fd < 0)
        return errno;
    err = read_fd(fd, text, len);
    close(fd);
    return err;
}

int gw_config_load_file(const char *path, gw_config_t **out, gw_diag_t *diag)
{
    char *text = NULL;
    size_t len = 0;
    int err, rc;

    *out = NULL;
    err = read_file(path, &text, &len);
    if (err) {
        gw_diag_add(diag, path, 0, 0, "cannot read: %s", strerror(err));
        return -1;
    }
    rc = gw_config_load_string(path, text, len, out, diag);
    free(text);
    return rc;
}

void gw_config_free(gw_config_t *cfg)
{
    if (cfg)
        arena_free(cfg->arena);
}
