/*
 * config.h - the parsed, validated Breakwater configuration (SPEC section 2).
 *
 * The YAML file is turned into one immutable gw_config_t. Everything the running code needs is
 * resolved here, once: durations are milliseconds, rates are tokens per period, ratios are parts
 * per million, upstream references are indexes, `${ENV}` is substituted. Code that runs with a
 * config never parses text again and never sees an invalid value.
 *
 * Ownership: gw_config_load_*() allocates; gw_config_free() releases everything, including every
 * string (they all live in one arena owned by the config). A config is never modified after load,
 * so several processes may hold copies made before fork().
 *
 * Errors: loading collects every problem it finds (not just the first) as
 * "FILE:LINE:COL: message" lines in a gw_diag_t, then fails if there was any.
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A list of diagnostics, each already formatted as "FILE:LINE:COL: message". */
typedef struct gw_diag {
    char **items;
    size_t n;
    size_t cap;
} gw_diag_t;

void gw_diag_init(gw_diag_t *d);
void gw_diag_dispose(gw_diag_t *d);
/* Appends "file:line:col: <fmt...>". line/col are 1-based; 0 prints as 0. */
void gw_diag_add(gw_diag_t *d, const char *file, unsigned line, unsigned col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Where a value came from in the file, for errors found after parsing. */
typedef struct gw_srcpos {
    unsigned line, col;
} gw_srcpos_t;

/* "host:port" or "[v6]:port", resolved to a numeric address at load time. */
typedef struct gw_addr {
    char *text; /* as written, e.g. "127.0.0.1:9001" */
    char *host; /* numeric host without brackets, e.g. "127.0.0.1" or "::1" */
    uint16_t port;
    int family; /* AF_INET or AF_INET6 */
} gw_addr_t;

/* `100/s` -> tokens=100, period_ms=1000. Always tokens >= 1, period_ms >= 1. */
typedef struct gw_rate {
    uint64_t tokens;
    uint64_t period_ms;
} gw_rate_t;

#define GW_PPM_ONE 1000000u /* a ratio of 100% */

typedef struct gw_health_check_config {
    bool enabled; /* false when the key is absent */
    char *path;   /* default "/health" */
    uint64_t interval_ms, timeout_ms;
    uint32_t healthy_threshold, unhealthy_threshold;
} gw_health_check_config_t;

typedef struct gw_outlier_config {
    uint32_t consecutive_failures; /* 0 = ejection disabled */
    uint64_t ejection_ms;
    uint32_t max_ejected_ppm;
} gw_outlier_config_t;

typedef struct gw_breaker_config {
    uint32_t consecutive_failures; /* 0 = this trigger disabled */
    uint32_t failure_rate_ppm;     /* 0 = this trigger disabled */
    uint64_t window_ms;
    uint32_t min_calls;
    uint64_t slow_call_duration_ms; /* 0 = slow calls not tracked */
    uint32_t slow_call_rate_ppm;
    uint64_t open_duration_ms, max_open_duration_ms;
    uint32_t half_open_requests;
} gw_breaker_config_t;

typedef struct gw_upstream_config {
    char *name;
    gw_srcpos_t pos;
    gw_addr_t *hosts;
    size_t nhosts;
    uint64_t connect_timeout_ms, timeout_ms;
    uint32_t max_concurrent;
    uint16_t *failure_statuses; /* sorted ascending, no duplicates */
    size_t nfailure_statuses;
    gw_health_check_config_t health_check;
    gw_outlier_config_t outlier;
    gw_breaker_config_t breaker;
} gw_upstream_config_t;

typedef enum gw_ratelimit_key {
    GW_RL_KEY_GLOBAL = 0,
    GW_RL_KEY_CLIENT_IP,
    GW_RL_KEY_HEADER,
} gw_ratelimit_key_t;

typedef struct gw_ratelimit_config {
    bool enabled; /* false when the route has no rate_limit */
    gw_rate_t rate;
    uint32_t burst;
    gw_ratelimit_key_t key;
    char *key_header; /* lower-cased header name, only for GW_RL_KEY_HEADER */
    uint32_t max_keys;
} gw_ratelimit_config_t;

typedef struct gw_fault_config {
    uint16_t abort_status; /* 0 = no abort configured */
    uint32_t abort_ppm;
    uint64_t delay_ms;
    uint32_t delay_ppm;
} gw_fault_config_t;

typedef struct gw_route_config {
    char *name;
    gw_srcpos_t pos;
    char *path_prefix;     /* always starts with '/' */
    char *host;            /* lower-cased, no port; NULL = any host */
    char *upstream_name;   /* as written */
    size_t upstream_index; /* index into gw_config_t.upstreams */
    uint64_t timeout_ms;   /* resolved: the route's, else its upstream's */
    gw_ratelimit_config_t rate_limit;
    gw_fault_config_t fault;
} gw_route_config_t;

typedef enum gw_channel_type {
    GW_CHANNEL_SLACK = 0,
    GW_CHANNEL_DINGTALK,
    GW_CHANNEL_FEISHU,
    GW_CHANNEL_WECOM,
    GW_CHANNEL_PAGERDUTY,
    GW_CHANNEL_TWILIO,
    GW_CHANNEL_EMAIL,
    GW_CHANNEL_TEAMS,
    GW_CHANNEL_OPSGENIE,
    GW_CHANNEL_ALERTMANAGER,
    GW_CHANNEL_WEBHOOK,
    GW_CHANNEL_CONSOLE,
    GW_CHANNEL_TYPE_COUNT
} gw_channel_type_t;

typedef struct gw_kv {
    char *key, *value;
} gw_kv_t;

/* One alert channel. Which fields are set depends on the type; the loader rejects keys that the
 * type does not take and requires the ones it needs (see docs/config.md). */
typedef struct gw_channel_config {
    char *name;
    gw_srcpos_t pos;
    gw_channel_type_t type;
    char *url;
    char *secret;
    char *routing_key;
    char *account_sid, *auth_token, *from;
    char *smtp_url;
    char *api_key;
    char **to;
    size_t nto;
    gw_kv_t *headers;
    size_t nheaders;
    gw_rate_t rate_limit; /* tokens == 0: no channel rate limit */
} gw_channel_config_t;

typedef enum gw_tier { GW_TIER_P0 = 0, GW_TIER_P1, GW_TIER_P2, GW_TIER_COUNT } gw_tier_t;

typedef struct gw_tier_config {
    bool defined;
    size_t *channels; /* indexes into gw_alerts_config_t.channels */
    size_t nchannels;
    uint64_t repeat_ms;         /* 0 = no repeat */
    uint64_t escalate_after_ms; /* 0 = no escalation */
    uint64_t group_wait_ms;     /* 0 = send at once */
} gw_tier_config_t;

/* Events that rules may map to tiers. */
typedef enum gw_event_kind {
    GW_EVENT_BREAKER_OPEN = 0,
    GW_EVENT_NO_HEALTHY_HOSTS,
    GW_EVENT_HOST_DOWN,
    GW_EVENT_WORKER_CRASH,
    GW_EVENT_WORKER_STALL,
    GW_EVENT_RATE_LIMITED,
    GW_EVENT_DELIVERY_FAILING,
    GW_EVENT_CRASH_LOOP,
    GW_EVENT_HANDLER_FAULT,
    GW_EVENT_STORE_DEGRADED, /* alert_store_degraded (control process: the SQLite store fails) */
    GW_EVENT_KIND_COUNT
} gw_event_kind_t;

/* Returns the rule name of an event kind ("breaker_open"), or NULL when out of range. */
const char *gw_event_kind_name(gw_event_kind_t k);

typedef struct gw_rule_config {
    bool defined;
    gw_tier_t tier;
    uint32_t ratio_ppm; /* rate_limited only: rejected share that fires */
    uint64_t for_ms;    /* rate_limited only: how long it must hold */
} gw_rule_config_t;

typedef struct gw_delivery_config {
    uint32_t max_attempts; /* 0 = until max_age */
    uint64_t max_age_ms, backoff_ms, max_backoff_ms;
} gw_delivery_config_t;

typedef struct gw_alerts_config {
    char *external_url; /* NULL when absent */
    gw_channel_config_t *channels;
    size_t nchannels;
    gw_tier_config_t tiers[GW_TIER_COUNT];
    gw_rule_config_t rules[GW_EVENT_KIND_COUNT];
    gw_delivery_config_t delivery;
    uint64_t retention_ms;
} gw_alerts_config_t;

typedef struct gw_config {
    char *source; /* file name used in diagnostics ("<default>" for the embedded one) */
    gw_addr_t *listen;
    size_t nlisten;
    uint32_t workers; /* resolved: default = online CPU count */
    uint64_t shutdown_timeout_ms;
    char *state_dir;
    gw_addr_t admin_listen;
    char *admin_token; /* NULL = no token (only allowed on a loopback admin address) */
    uint64_t stall_after_ms;
    gw_upstream_config_t *upstreams;
    size_t nupstreams;
    gw_route_config_t *routes;
    size_t nroutes;
    bool debug_fault_headers;
    gw_alerts_config_t alerts;
    void *arena; /* private: owns every allocation above */
} gw_config_t;

/* Loads and validates a YAML config. On success returns a new config in *out and 0. On failure
 * returns -1, leaves *out NULL and appends one diagnostic per problem to diag (never zero). A file
 * that cannot be read is reported as "FILE:0:0: cannot read: <strerror>". */
int gw_config_load_file(const char *path, gw_config_t **out, gw_diag_t *diag);

/* The same from memory; `name` is the file name used in diagnostics. */
int gw_config_load_string(const char *name, const char *text, size_t len, gw_config_t **out,
                          gw_diag_t *diag);

/* The embedded default config (gateway/default_config.yaml) as text. */
extern const char gw_default_config_yaml[];

void gw_config_free(gw_config_t *cfg);

/* Value parsers, exposed for the loader's unit tests and for the admin API. Each returns 0 on
 * success and -1 on a malformed or out-of-range value; strict: no spaces, no trailing junk. */
int gw_parse_duration_ms(const char *s, uint64_t *out); /* "250ms" "5s" "2m" "1h" "1d" "0s" */
int gw_parse_rate(const char *s, gw_rate_t *out);       /* "100/s" "6000/m" "10/h" */
int gw_parse_ratio_ppm(const char *s, uint32_t *out);   /* "50%" "12.5%" "0%" "100%" */
/* "1.2.3.4:80" or "[::1]:80": numeric hosts only (no DNS at load or run time). Writes the host
 * without brackets into host (NUL-terminated, fails when it does not fit). */
int gw_parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port, int *family);

#endif
