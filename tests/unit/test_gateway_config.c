/*
 * test_gateway_config.c - the YAML config loader (gateway/config.c).
 *
 * Declarative: each error test is a small YAML text and the one diagnostic it must produce, with
 * its exact "FILE:LINE:COL: " prefix (the file name is always "t.yaml") and the words that name
 * the problem. The happy paths load the SPEC section 2 example, the embedded default and a
 * minimal config, and check every resolved value. Run under ASan+UBSan: every failure path frees
 * the arena, so leaks show up here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A valid upstream + route, two lines each, to append after (or put before) the part tested. */
#define UP "upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"] }\n"
#define RT "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n"

typedef struct result {
    int rc;
    gw_config_t *cfg;
    gw_diag_t diag;
} result_t;

static void load(const char *yaml, result_t *r)
{
    gw_diag_init(&r->diag);
    r->cfg = (gw_config_t *)1; /* must be reset to NULL on failure */
    r->rc = gw_config_load_string("t.yaml", yaml, strlen(yaml), &r->cfg, &r->diag);
}

static void release(result_t *r)
{
    gw_config_free(r->cfg);
    gw_diag_dispose(&r->diag);
}

static void dump(const gw_diag_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        print_message("  diag: %s\n", d->items[i]);
}

/* Loads yaml, which must succeed; the caller releases. */
static gw_config_t *load_ok(const char *yaml, result_t *r)
{
    load(yaml, r);
    if (r->rc != 0)
        dump(&r->diag);
    assert_int_equal(r->rc, 0);
    assert_int_equal(r->diag.n, 0);
    assert_non_null(r->cfg);
    return r->cfg;
}

static bool diag_matches(const char *item, const char *prefix, const char *needle)
{
    return !strncmp(item, prefix, strlen(prefix)) && strstr(item + strlen(prefix), needle);
}

/* Loads yaml, which must fail with exactly one diagnostic that starts with prefix and contains
 * needle after it. */
static void expect_one(const char *yaml, const char *prefix, const char *needle)
{
    result_t r;
    load(yaml, &r);
    if (r.diag.n != 1 || !diag_matches(r.diag.items[0], prefix, needle)) {
        print_message("want: %s...%s\n", prefix, needle);
        dump(&r.diag);
    }
    assert_int_equal(r.rc, -1);
    assert_null(r.cfg);
    assert_int_equal(r.diag.n, 1);
    assert_true(diag_matches(r.diag.items[0], prefix, needle));
    release(&r);
}

/* ---- unknown keys, types, values ---- */

static void unknown_key_in_upstream_is_reported_at_the_key(void **state)
{
    (void)state;
    expect_one("upstreams:\n"
               "  users:\n"
               "    hosts: [\"127.0.0.1:9001\"]\n"
               "    foo: 1\n"
               "routes:\n"
               "  - { name: r, match: { path_prefix: / }, upstream: users }\n",
               "t.yaml:4:5: ", "unknown key 'foo' in upstream 'users'");
}

static void unknown_top_level_key_is_reported(void **state)
{
    (void)state;
    expect_one(UP RT "listn: [\"127.0.0.1:1\"]\n", "t.yaml:5:1: ", "unknown key 'listn'");
}

static void unknown_key_in_nested_flow_mapping_is_reported(void **state)
{
    (void)state;
    expect_one(UP "routes:\n"
                  "  - { name: r, match: { path_prefix: /, hots: a }, upstream: u }\n",
               "t.yaml:4:41: ", "unknown key 'hots' in route 'r' match");
}

static void string_where_a_list_belongs_is_a_type_error(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u: { hosts: \"127.0.0.1:9001\" }\n" RT,
               "t.yaml:2:15: ", "'hosts' in upstream 'u' must be a list, not a quoted string");
}

static void quoted_integer_is_a_type_error(void **state)
{
    (void)state;
    expect_one("workers: \"2\"\n" UP RT, "t.yaml:1:10: ", "'workers' must be an integer");
}

static void mapping_where_a_duration_belongs_is_a_type_error(void **state)
{
    (void)state;
    expect_one("shutdown_timeout: { a: 1 }\n" UP RT,
               "t.yaml:1:19: ", "'shutdown_timeout' must be a duration, not a mapping");
}

static void bad_duration_is_reported_at_the_value(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n    timeout: 1.5s\n" RT,
               "t.yaml:4:14: ", "invalid duration '1.5s' for 'timeout' in upstream 'u'");
}

static void zero_timeout_is_rejected(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n    timeout: 0s\n" RT,
               "t.yaml:4:14: ", "'timeout' in upstream 'u' must be more than 0s");
}

static void bad_rate_is_reported_at_the_value(void **state)
{
    (void)state;
    expect_one(UP "routes:\n"
                  "  - name: r\n"
                  "    match: { path_prefix: / }\n"
                  "    upstream: u\n"
                  "    rate_limit: { rate: 0/s }\n",
               "t.yaml:7:25: ", "invalid rate '0/s' for 'rate' in route 'r' rate_limit");
}

static void bad_ratio_is_reported_at_the_value(void **state)
{
    (void)state;
    expect_one(
        "upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n"
        "    breaker: { failure_rate: 100.5% }\n" RT,
        "t.yaml:4:30: ", "invalid ratio '100.5%' for 'failure_rate' in upstream 'u' breaker");
}

static void bad_address_is_reported_at_the_item(void **state)
{
    (void)state;
    expect_one("listen: [\"127.0.0.1:80\", \"localhost:80\"]\n" UP RT,
               "t.yaml:1:26: ", "invalid address 'localhost:80' for 'listen'");
}

static void duplicate_listen_address_is_rejected(void **state)
{
    (void)state;
    expect_one("listen: [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n" UP RT,
               "t.yaml:1:26: ", "duplicate address '127.0.0.1:80'");
}

static void workers_out_of_range_is_rejected(void **state)
{
    (void)state;
    expect_one("workers: 257\n" UP RT,
               "t.yaml:1:10: ", "'workers' must be an integer from 1 to 256");
}

static void boolean_must_be_true_or_false(void **state)
{
    (void)state;
    expect_one("debug: { fault_headers: yes }\n" UP RT,
               "t.yaml:1:25: ", "'fault_headers' in debug must be true or false");
}

static void failure_status_out_of_range_is_rejected(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n"
               "    failure_statuses: [500, 99]\n" RT,
               "t.yaml:4:29: ", "'failure_statuses' in upstream 'u' must be an integer from 100");
}

static void abort_status_below_200_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: u\n"
                  "    fault: { abort: { status: 199, percent: 1 } }\n",
               "t.yaml:7:31: ", "'status' in route 'r' fault abort must be an integer from 200");
}

static void percent_above_100_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: u\n"
                  "    fault: { delay: { duration: 1s, percent: 101 } }\n",
               "t.yaml:7:46: ", "invalid percentage '101'");
}

static void half_written_fault_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: u\n"
                  "    fault: { abort: { status: 503 } }\n",
               "t.yaml:7:14: ", "'abort' in route 'r' fault needs 'percent'");
}

static void path_prefix_must_start_with_slash(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - { name: r, match: { path_prefix: api }, upstream: u }\n",
               "t.yaml:4:38: ", "'path_prefix' in route 'r' match must start with '/'");
}

static void host_with_port_is_rejected(void **state)
{
    (void)state;
    expect_one(
        UP "routes:\n  - { name: r, match: { path_prefix: /, host: \"a.b:80\" }, upstream: u }\n",
        "t.yaml:4:47: ", "must not include a port");
}

static void bad_rate_limit_key_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: u\n"
                  "    rate_limit: { rate: 1/s, key: \"header:\" }\n",
               "t.yaml:7:35: ", "invalid key 'header:'");
}

static void burst_zero_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: u\n"
                  "    rate_limit: { rate: 1/s, burst: 0 }\n",
               "t.yaml:7:37: ", "'burst' in route 'r' rate_limit must be an integer from 1");
}

static void health_timeout_must_be_below_interval(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n"
               "    health_check: { interval: 1s, timeout: 1s }\n" RT,
               "t.yaml:4:44: ", "'timeout' (1000ms) must be less than 'interval' (1000ms)");
}

static void health_threshold_zero_is_rejected(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n"
               "    health_check: { healthy_threshold: 0 }\n" RT,
               "t.yaml:4:40: ", "'healthy_threshold' in upstream 'u' health_check");
}

static void max_open_duration_below_open_duration_is_rejected(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n"
               "    breaker: { open_duration: 3m }\n" RT,
               "t.yaml:4:31: ", "'max_open_duration' (120000ms) must be at least 'open_duration'");
}

static void half_open_requests_zero_is_rejected(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n"
               "    breaker: { half_open_requests: 0 }\n" RT,
               "t.yaml:4:36: ", "'half_open_requests' in upstream 'u' breaker");
}

/* ---- references and names ---- */

static void undefined_upstream_reference_is_reported_at_the_value(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - { name: r, match: { path_prefix: / }, upstream: nope }\n",
               "t.yaml:4:53: ", "upstream 'nope' in route 'r' is not defined");
}

static void duplicate_route_name_is_reported_at_the_second(void **state)
{
    (void)state;
    expect_one(UP "routes:\n"
                  "  - { name: r, match: { path_prefix: /a }, upstream: u }\n"
                  "  - { name: r, match: { path_prefix: /b }, upstream: u }\n",
               "t.yaml:5:13: ", "duplicate route name 'r' (first defined at 4:5)");
}

static void duplicate_upstream_name_is_reported_at_the_second(void **state)
{
    (void)state;
    expect_one("upstreams:\n"
               "  u: { hosts: [\"127.0.0.1:9001\"] }\n"
               "  u: { hosts: [\"127.0.0.1:9002\"] }\n" RT,
               "t.yaml:3:3: ", "duplicate upstream 'u' (first defined at 2:3)");
}

static void duplicate_key_in_a_mapping_is_reported(void **state)
{
    (void)state;
    expect_one(
        "upstreams:\n  u:\n    hosts: [\"127.0.0.1:9001\"]\n    timeout: 1s\n    timeout: 2s\n" RT,
        "t.yaml:5:5: ", "duplicate key 'timeout' in upstream 'u'");
}

static void invalid_upstream_name_is_rejected(void **state)
{
    (void)state;
    expect_one("upstreams:\n  \"a b\": { hosts: [\"127.0.0.1:9001\"] }\n"
               "  u: { hosts: [\"127.0.0.1:9001\"] }\n" RT,
               "t.yaml:2:3: ", "invalid upstream name 'a b'");
}

static void missing_upstreams_and_routes_are_both_reported(void **state)
{
    result_t r;
    (void)state;
    load("workers: 1\n", &r);
    assert_int_equal(r.rc, -1);
    assert_int_equal(r.diag.n, 2);
    assert_string_equal(r.diag.items[0], "t.yaml:1:1: the config needs 'upstreams' (at least one)");
    assert_string_equal(r.diag.items[1], "t.yaml:1:1: the config needs 'routes' (at least one)");
    release(&r);
}

static void empty_routes_list_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes: []\n", "t.yaml:3:9: ", "'routes' must define at least one route");
}

static void route_without_name_is_rejected(void **state)
{
    (void)state;
    expect_one(UP "routes:\n  - { match: { path_prefix: / }, upstream: u }\n",
               "t.yaml:4:5: ", "route #1 needs a 'name'");
}

/* ---- alerts ---- */

#define TIERS                                                                                      \
    "  tiers:\n    P0: { channels: [log] }\n    P1: { channels: [log] }\n    P2: { channels: "     \
    "[log] }\n"

static void undefined_channel_in_tier_is_reported_at_the_name(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n"
                     "  channels: { log: { type: console } }\n"
                     "  tiers:\n"
                     "    P0: { channels: [log, pager] }\n"
                     "    P1: { channels: [log] }\n"
                     "    P2: { channels: [log] }\n",
               "t.yaml:8:27: ", "channel 'pager' in tier P0 is not defined");
}

static void unknown_tier_name_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels: { log: { type: console } }\n" TIERS
                     "    P3: { channels: [log] }\n",
               "t.yaml:11:5: ", "unknown tier 'P3'");
}

static void unknown_rule_event_is_reported_at_the_key(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels: { log: { type: console } }\n" TIERS
                     "  rules:\n    breaker_opened: P1\n",
               "t.yaml:12:5: ", "unknown rule event 'breaker_opened'");
}

static void rule_naming_an_undefined_tier_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n"
                     "  channels: { log: { type: console } }\n"
                     "  tiers: { P0: { channels: [log] }, P2: { channels: [log] } }\n"
                     "  rules: { breaker_open: P2, worker_stall: P2, delivery_failing: P1 }\n",
               "t.yaml:8:66: ", "rule 'delivery_failing': tier P1 is not defined");
}

/* alert_store_degraded defaults to P1 but, unlike the other rules, takes the most urgent defined
 * tier instead of refusing a config without P1. */
static void store_degraded_rule_falls_back_to_a_defined_tier(void **state)
{
    result_t r;
    gw_config_t *c;
    (void)state;
    c = load_ok(UP RT "alerts:\n"
                      "  channels: { log: { type: console } }\n"
                      "  tiers: { P0: { channels: [log] }, P2: { channels: [log] } }\n"
                      "  rules: { breaker_open: P2, worker_stall: P2, delivery_failing: P0 }\n",
                &r);
    assert_true(c->alerts.rules[GW_EVENT_STORE_DEGRADED].defined);
    assert_int_equal(c->alerts.rules[GW_EVENT_STORE_DEGRADED].tier, GW_TIER_P0);
    gw_config_free(c);
    c = load_ok(UP RT "alerts:\n  channels: { log: { type: console } }\n" TIERS
                      "  rules: { alert_store_degraded: P2 }\n",
                &r);
    assert_int_equal(c->alerts.rules[GW_EVENT_STORE_DEGRADED].tier, GW_TIER_P2);
    gw_config_free(c);
}

static void ratio_is_only_for_rate_limited(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels: { log: { type: console } }\n" TIERS
                     "  rules:\n    breaker_open: { tier: P1, ratio: 5% }\n",
               "t.yaml:12:31: ", "key 'ratio' is not valid for rule 'breaker_open'");
}

static void missing_required_channel_keys_are_each_reported(void **state)
{
    result_t r;
    (void)state;
    load(UP RT "alerts:\n"
               "  channels:\n"
               "    phone: { type: twilio, account_sid: a, to: [\"+1\"] }\n"
               "    log: { type: console }\n" TIERS,
         &r);
    if (r.diag.n != 2)
        dump(&r.diag);
    assert_int_equal(r.rc, -1);
    assert_int_equal(r.diag.n, 2);
    assert_string_equal(r.diag.items[0],
                        "t.yaml:7:5: channel 'phone' of type twilio needs 'auth_token'");
    assert_string_equal(r.diag.items[1], "t.yaml:7:5: channel 'phone' of type twilio needs 'from'");
    release(&r);
}

static void key_not_taken_by_the_channel_type_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n"
                     "  channels:\n"
                     "    log: { type: slack, url: \"https://x\", secret: s }\n" TIERS,
               "t.yaml:7:43: ",
               "key 'secret' is not valid for channel 'log' of type slack (valid keys: type, url, "
               "rate_limit)");
}

static void unknown_channel_type_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels:\n    log: { type: pigeon }\n" TIERS,
               "t.yaml:7:18: ", "unknown channel type 'pigeon'");
}

static void channel_url_needs_http_scheme(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels:\n    log: { type: webhook, url: \"ftp://x\" }\n" TIERS,
               "t.yaml:7:32: ", "invalid URL 'ftp://x' for 'url' in channel 'log'");
}

static void email_needs_smtp_url(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels:\n"
                     "    log: { type: email, smtp_url: \"https://x\", from: a, to: [b] }\n" TIERS,
               "t.yaml:7:35: ", "must start with smtp:// or smtps://");
}

static void duplicate_channel_is_rejected(void **state)
{
    (void)state;
    expect_one(
        UP RT
        "alerts:\n  channels:\n    log: { type: console }\n    log: { type: console }\n" TIERS,
        "t.yaml:8:5: ", "duplicate channel 'log' (first defined at 7:5)");
}

static void alerts_without_tiers_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels: { log: { type: console } }\n",
               "t.yaml:5:1: ", "'alerts' needs 'tiers'");
}

static void escalating_p0_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "alerts:\n  channels: { log: { type: console } }\n"
                     "  tiers:\n    P0: { channels: [log], escalate_after: 1m }\n"
                     "    P1: { channels: [log] }\n    P2: { channels: [log] }\n",
               "t.yaml:8:28: ", "P0 is the top tier and cannot escalate");
}

/* ---- environment ---- */

static void unset_env_var_is_reported_with_its_name_and_position(void **state)
{
    (void)state;
    unsetenv("BW_TEST_UNSET_VAR");
    expect_one("state_dir: \"/srv/${BW_TEST_UNSET_VAR}/x\"\n" UP RT,
               "t.yaml:1:12: ", "environment variable 'BW_TEST_UNSET_VAR' is not set");
}

static void env_vars_are_substituted_in_strings(void **state)
{
    result_t r;
    gw_config_t *c;
    (void)state;
    setenv("BW_TEST_TOKEN", "s3cret", 1);
    setenv("BW_TEST_EMPTY", "", 1);
    unsetenv("BW_TEST_UNSET_VAR");
    c = load_ok("state_dir: \"/a/${BW_TEST_UNSET_VAR:-dflt}/$$HOME/${BW_TEST_EMPTY:-e}\"\n"
                "admin: { listen: \"0.0.0.0:9901\", token: \"Bearer ${BW_TEST_TOKEN}\" }\n" UP RT,
                &r);
    assert_string_equal(c->state_dir, "/a/dflt/$HOME/e");
    assert_string_equal(c->admin_token, "Bearer s3cret");
    release(&r);
}

static void env_vars_work_in_integers_booleans_and_durations(void **state)
{
    result_t r;
    gw_config_t *c;
    (void)state;
    setenv("BW_TEST_WORKERS", "3", 1);
    unsetenv("BW_TEST_UNSET_VAR");
    c = load_ok("workers: ${BW_TEST_WORKERS}\n"
                "shutdown_timeout: ${BW_TEST_UNSET_VAR:-250ms}\n"
                "debug: { fault_headers: \"${BW_TEST_UNSET_VAR:-true}\" }\n" UP RT,
                &r);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->shutdown_timeout_ms, 250);
    assert_true(c->debug_fault_headers);
    release(&r);
}

static void env_vars_are_not_substituted_in_keys(void **state)
{
    (void)state;
    setenv("BW_TEST_KEY", "workers", 1);
    expect_one("${BW_TEST_KEY}: 2\n" UP RT, "t.yaml:1:1: ", "unknown key '${BW_TEST_KEY}'");
}

static void unterminated_reference_is_rejected(void **state)
{
    (void)state;
    expect_one("state_dir: \"${HOME\"\n" UP RT, "t.yaml:1:12: ", "unterminated '${'");
}

/* ---- admin ---- */

static void non_loopback_admin_without_token_is_rejected(void **state)
{
    (void)state;
    expect_one("admin: { listen: \"0.0.0.0:9901\" }\n" UP RT,
               "t.yaml:1:18: ", "admin API on a non-loopback address needs a token");
}

static void non_loopback_admin_with_empty_token_is_rejected(void **state)
{
    (void)state;
    expect_one("admin:\n  listen: \"[::]:9901\"\n  token: \"\"\n" UP RT,
               "t.yaml:2:11: ", "admin API on a non-loopback address needs a token");
}

static void loopback_admin_needs_no_token(void **state)
{
    result_t r;
    gw_config_t *c;
    (void)state;
    c = load_ok("admin: { listen: \"[::1]:9902\" }\n" UP RT, &r);
    assert_string_equal(c->admin_listen.host, "::1");
    assert_int_equal(c->admin_listen.port, 9902);
    assert_int_equal(c->admin_listen.family, AF_INET6);
    assert_null(c->admin_token);
    release(&r);
}

/* ---- YAML itself ---- */

static void yaml_syntax_error_has_a_position(void **state)
{
    (void)state;
    expect_one("upstreams:\n  u: { hosts: [\"127.0.0.1:9001\" }\n" RT,
               "t.yaml:2:33: ", "YAML syntax error: did not find expected ',' or ']'");
}

static void tab_indentation_is_a_syntax_error(void **state)
{
    (void)state;
    expect_one("workers: 1\n\tstate_dir: x\n", "t.yaml:2:1: ", "YAML syntax error");
}

static void empty_config_is_rejected(void **state)
{
    (void)state;
    expect_one("# nothing\n", "t.yaml:1:1: ", "the config is empty");
}

static void root_must_be_a_mapping(void **state)
{
    (void)state;
    expect_one("- a\n", "t.yaml:1:1: ", "the config must be a mapping of keys, not a list");
}

static void second_document_is_rejected(void **state)
{
    (void)state;
    expect_one(UP RT "---\nworkers: 1\n", "t.yaml:6:1: ", "only one YAML document");
}

static void unreadable_file_is_reported_at_0_0(void **state)
{
    gw_config_t *c = (gw_config_t *)1;
    gw_diag_t d;
    (void)state;
    gw_diag_init(&d);
    assert_int_equal(gw_config_load_file("/nonexistent/bw.yaml", &c, &d), -1);
    assert_null(c);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.items[0],
                        "/nonexistent/bw.yaml:0:0: cannot read: No such file or directory");
    gw_diag_dispose(&d);
}

static void file_is_loaded_and_named_in_diagnostics(void **state)
{
    char path[] = "/tmp/bw_config_test_XXXXXX";
    const char *text = UP RT "workers: 3\n";
    gw_config_t *c = NULL;
    gw_diag_t d;
    int fd = mkstemp(path);
    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    gw_diag_init(&d);
    assert_int_equal(gw_config_load_file(path, &c, &d), 0);
    assert_int_equal(c->workers, 3);
    assert_string_equal(c->source, path);
    gw_config_free(c);
    unlink(path);
    gw_diag_dispose(&d);
}

/* ---- many errors at once ---- */

static void every_error_is_reported_in_file_order(void **state)
{
    result_t r;
    (void)state;
    load("routes:\n"
         "  - { name: r, match: { path_prefix: / }, upstream: nope }\n"
         "workers: 0\n"
         "upstreams:\n"
         "  u:\n"
         "    hosts: [\"127.0.0.1:99999\"]\n"
         "    bogus: true\n"
         "    timeout: 5 s\n",
         &r);
    if (r.diag.n != 5)
        dump(&r.diag);
    assert_int_equal(r.rc, -1);
    assert_int_equal(r.diag.n, 5);
    assert_true(diag_matches(r.diag.items[0], "t.yaml:2:53: ", "upstream 'nope'"));
    assert_true(diag_matches(r.diag.items[1], "t.yaml:3:10: ", "'workers'"));
    assert_true(diag_matches(r.diag.items[2], "t.yaml:6:13: ", "invalid address"));
    assert_true(diag_matches(r.diag.items[3], "t.yaml:7:5: ", "unknown key 'bogus'"));
    assert_true(diag_matches(r.diag.items[4], "t.yaml:8:14: ", "invalid duration '5 s'"));
    release(&r);
}

static void errors_of_every_section_are_collected(void **state)
{
    result_t r;
    (void)state;
    load("workers: x\n"
         "upstreams:\n"
         "  u: { hosts: [\"1.2.3.4:0\"], timeout: -1s }\n"
         "routes:\n"
         "  - { name: r, match: { path_prefix: x }, upstream: u }\n"
         "alerts:\n"
         "  channels: { c: { type: slack } }\n"
         "  tiers: { P0: { channels: [d] } }\n"
         "  rules: { nope: P0 }\n",
         &r);
    assert_int_equal(r.rc, -1);
    if (r.diag.n < 7)
        dump(&r.diag);
    assert_true(r.diag.n >= 7);
    for (size_t i = 1; i < r.diag.n; i++) /* sorted by line */
        assert_true(strtoul(r.diag.items[i - 1] + 7, NULL, 10) <=
                    strtoul(r.diag.items[i] + 7, NULL, 10));
    release(&r);
}

/* ---- full configs ---- */

static const char spec_example[] =
    "listen: [\"0.0.0.0:8080\"]               # one or more; HTTP/1.1 and h2c\n"
    "workers: 2                            # worker processes; default = CPU count\n"
    "shutdown_timeout: 10s\n"
    "state_dir: ./var                      # holds breakwater.db (SQLite, WAL)\n"
    "admin: { listen: \"127.0.0.1:9901\", token: \"${BW_ADMIN_TOKEN}\" }   # token optional\n"
    "watchdog: { stall_after: 2s }         # a worker loop blocked this long is replaced\n"
    "upstreams:\n"
    "  users:\n"
    "    hosts: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n"
    "    connect_timeout: 1s\n"
    "    timeout: 5s                       # default per-request upstream timeout\n"
    "    max_concurrent: 1000              # bulkhead; excess -> 503 upstream_overloaded\n"
    "    failure_statuses: [500, 502, 503, 504]\n"
    "    health_check: { path: /health, interval: 2s, timeout: 500ms,\n"
    "                    healthy_threshold: 2, unhealthy_threshold: 3 }\n"
    "    outlier: { consecutive_failures: 5, ejection: 30s, max_ejected: 50% }   # per host\n"
    "    breaker:                          # per upstream\n"
    "      consecutive_failures: 5\n"
    "      failure_rate: 50%               # over `window`, once `min_calls` calls are in it\n"
    "      window: 10s\n"
    "      min_calls: 20\n"
    "      slow_call_duration: 2s          # calls slower than this count as slow\n"
    "      slow_call_rate: 100%            # trips when this share of the window is slow\n"
    "      open_duration: 5s               # first open; doubles on each re-open\n"
    "      max_open_duration: 2m\n"
    "      half_open_requests: 2           # trial requests let through\n"
    "routes:                               # first match wins\n"
    "  - name: users-api\n"
    "    match: { path_prefix: /api/users, host: \"api.internal\" }    # host optional\n"
    "    upstream: users\n"
    "    timeout: 2s                       # overrides the upstream's\n"
    "    rate_limit: { rate: 100/s, burst: 50, key: client_ip, max_keys: 100000 }\n"
    "                                      # key: global | client_ip | header:NAME\n"
    "    fault: { abort: { status: 503, percent: 0 }, delay: { duration: 0s, percent: 0 } }\n"
    "debug: { fault_headers: false }       # true: honour X-Breakwater-Fault (tests only)\n"
    "alerts:\n"
    "  external_url: \"https://gw.example.internal\"   # for signed ack links (optional)\n"
    "  channels:\n"
    "    chat:   { type: slack, url: \"${SLACK_URL}\" }\n"
    "    ding:   { type: dingtalk, url: \"https://oapi.dingtalk.com/robot/send?access_token=t\", "
    "secret: \"${DING_SECRET}\" }\n"
    "    feishu: { type: feishu, url: \"https://open.feishu.cn/open-apis/bot/v2/hook/x\", "
    "secret: \"fs\" }\n"
    "    wecom:  { type: wecom, url: \"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k\" }\n"
    "    pager:  { type: pagerduty, routing_key: \"${PD_KEY}\", url: "
    "\"https://events.pagerduty.com/v2/enqueue\" }\n"
    "    phone:  { type: twilio, account_sid: \"AC123\", auth_token: \"tw\", from: \"+15550100\", "
    "to: [\"+15550101\", \"+15550102\"] }\n"
    "    mail:   { type: email, smtp_url: \"smtps://smtp.example.com:465\", from: "
    "\"gw@example.com\", to: [\"sre@example.com\"] }\n"
    "    teams:  { type: teams, url: \"https://example.webhook.office.com/x\" }\n"
    "    genie:  { type: opsgenie, api_key: \"${OG_KEY}\", url: \"https://api.opsgenie.com\" }\n"
    "    am:     { type: alertmanager, url: \"http://127.0.0.1:9093/hook\" }\n"
    "    hook:   { type: webhook, url: \"http://127.0.0.1:8099/hook\", headers: { X-Team: sre } "
    "}\n"
    "    log:    { type: console }\n"
    "    # any channel may add  rate_limit: 20/m\n"
    "  tiers:\n"
    "    P0: { channels: [phone, pager, chat], repeat: 5m }\n"
    "    P1: { channels: [chat, mail], escalate_after: 15m }     # unacknowledged -> P0\n"
    "    P2: { channels: [chat], escalate_after: 1h, group_wait: 30s }\n"
    "  rules:                              # event -> tier\n"
    "    breaker_open: P1\n"
    "    no_healthy_hosts: P0\n"
    "    host_down: P2\n"
    "    worker_crash: P0\n"
    "    worker_stall: P1\n"
    "    rate_limited: { tier: P2, ratio: 20%, for: 1m }\n"
    "    delivery_failing: P1\n"
    "  delivery: { max_attempts: 0, max_age: 24h, backoff: 1s, max_backoff: 5m }\n"
    "  retention: 30d\n";

static void check_spec_top(const gw_config_t *c)
{
    assert_string_equal(c->source, "t.yaml");
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].text, "0.0.0.0:8080");
    assert_string_equal(c->listen[0].host, "0.0.0.0");
    assert_int_equal(c->listen[0].port, 8080);
    assert_int_equal(c->listen[0].family, AF_INET);
    assert_int_equal(c->workers, 2);
    assert_int_equal(c->shutdown_timeout_ms, 10000);
    assert_string_equal(c->state_dir, "./var");
    assert_string_equal(c->admin_listen.host, "127.0.0.1");
    assert_int_equal(c->admin_listen.port, 9901);
    assert_string_equal(c->admin_token, "adm-token");
    assert_int_equal(c->stall_after_ms, 2000);
    assert_false(c->debug_fault_headers);
}

static void check_spec_upstream(const gw_upstream_config_t *u)
{
    static const uint16_t st[] = {500, 502, 503, 504};
    assert_string_equal(u->name, "users");
    assert_int_equal(u->pos.line, 8);
    assert_int_equal(u->pos.col, 3);
    assert_int_equal(u->nhosts, 2);
    assert_string_equal(u->hosts[1].text, "127.0.0.1:9002");
    assert_int_equal(u->hosts[1].port, 9002);
    assert_int_equal(u->connect_timeout_ms, 1000);
    assert_int_equal(u->timeout_ms, 5000);
    assert_int_equal(u->max_concurrent, 1000);
    assert_int_equal(u->nfailure_statuses, 4);
    assert_memory_equal(u->failure_statuses, st, sizeof st);
    assert_true(u->health_check.enabled);
    assert_string_equal(u->health_check.path, "/health");
    assert_int_equal(u->health_check.interval_ms, 2000);
    assert_int_equal(u->health_check.timeout_ms, 500);
    assert_int_equal(u->health_check.healthy_threshold, 2);
    assert_int_equal(u->health_check.unhealthy_threshold, 3);
    assert_int_equal(u->outlier.consecutive_failures, 5);
    assert_int_equal(u->outlier.ejection_ms, 30000);
    assert_int_equal(u->outlier.max_ejected_ppm, 500000);
}

static void check_spec_breaker(const gw_breaker_config_t *b)
{
    assert_int_equal(b->consecutive_failures, 5);
    assert_int_equal(b->failure_rate_ppm, 500000);
    assert_int_equal(b->window_ms, 10000);
    assert_int_equal(b->min_calls, 20);
    assert_int_equal(b->slow_call_duration_ms, 2000);
    assert_int_equal(b->slow_call_rate_ppm, GW_PPM_ONE);
    assert_int_equal(b->open_duration_ms, 5000);
    assert_int_equal(b->max_open_duration_ms, 120000);
    assert_int_equal(b->half_open_requests, 2);
}

static void check_spec_route(const gw_route_config_t *r)
{
    assert_string_equal(r->name, "users-api");
    assert_string_equal(r->path_prefix, "/api/users");
    assert_string_equal(r->host, "api.internal");
    assert_string_equal(r->upstream_name, "users");
    assert_int_equal(r->upstream_index, 0);
    assert_int_equal(r->timeout_ms, 2000);
    assert_true(r->rate_limit.enabled);
    assert_int_equal(r->rate_limit.rate.tokens, 100);
    assert_int_equal(r->rate_limit.rate.period_ms, 1000);
    assert_int_equal(r->rate_limit.burst, 50);
    assert_int_equal(r->rate_limit.key, GW_RL_KEY_CLIENT_IP);
    assert_null(r->rate_limit.key_header);
    assert_int_equal(r->rate_limit.max_keys, 100000);
    assert_int_equal(r->fault.abort_status, 503);
    assert_int_equal(r->fault.abort_ppm, 0);
    assert_int_equal(r->fault.delay_ms, 0);
    assert_int_equal(r->fault.delay_ppm, 0);
}

static const gw_channel_config_t *channel(const gw_alerts_config_t *a, const char *name)
{
    for (size_t i = 0; i < a->nchannels; i++)
        if (!strcmp(a->channels[i].name, name))
            return &a->channels[i];
    fail_msg("no channel %s", name);
    return NULL;
}

static void check_spec_channels(const gw_alerts_config_t *a)
{
    const gw_channel_config_t *c;
    assert_int_equal(a->nchannels, 12);
    assert_string_equal(a->channels[0].name, "chat");
    assert_int_equal(a->channels[0].type, GW_CHANNEL_SLACK);
    assert_string_equal(a->channels[0].url, "https://hooks.slack.com/services/T/B/X");
    c = channel(a, "ding");
    assert_int_equal(c->type, GW_CHANNEL_DINGTALK);
    assert_string_equal(c->secret, "ding-secret");
    assert_string_equal(channel(a, "feishu")->secret, "fs");
    assert_int_equal(channel(a, "wecom")->type, GW_CHANNEL_WECOM);
    c = channel(a, "pager");
    assert_int_equal(c->type, GW_CHANNEL_PAGERDUTY);
    assert_string_equal(c->routing_key, "pd-key");
    c = channel(a, "phone");
    assert_int_equal(c->type, GW_CHANNEL_TWILIO);
    assert_string_equal(c->account_sid, "AC123");
    assert_string_equal(c->auth_token, "tw");
    assert_string_equal(c->from, "+15550100");
    assert_int_equal(c->nto, 2);
    assert_string_equal(c->to[1], "+15550102");
    assert_null(c->url);
    c = channel(a, "mail");
    assert_string_equal(c->smtp_url, "smtps://smtp.example.com:465");
    assert_string_equal(c->to[0], "sre@example.com");
    assert_int_equal(channel(a, "teams")->type, GW_CHANNEL_TEAMS);
    c = channel(a, "genie");
    assert_string_equal(c->api_key, "og-key");
    assert_string_equal(c->url, "https://api.opsgenie.com");
    assert_int_equal(channel(a, "am")->type, GW_CHANNEL_ALERTMANAGER);
    c = channel(a, "hook");
    assert_int_equal(c->nheaders, 1);
    assert_string_equal(c->headers[0].key, "X-Team");
    assert_string_equal(c->headers[0].value, "sre");
    assert_int_equal(c->rate_limit.tokens, 0);
    assert_int_equal(channel(a, "log")->type, GW_CHANNEL_CONSOLE);
}

static void check_spec_tiers_rules(const gw_alerts_config_t *a)
{
    const gw_tier_config_t *t = a->tiers;
    assert_string_equal(a->external_url, "https://gw.example.internal");
    assert_true(t[0].defined && t[1].defined && t[2].defined);
    assert_int_equal(t[0].nchannels, 3);
    assert_string_equal(a->channels[t[0].channels[0]].name, "phone");
    assert_string_equal(a->channels[t[0].channels[1]].name, "pager");
    assert_string_equal(a->channels[t[0].channels[2]].name, "chat");
    assert_int_equal(t[0].repeat_ms, 300000);
    assert_int_equal(t[0].escalate_after_ms, 0);
    assert_int_equal(t[1].nchannels, 2);
    assert_string_equal(a->channels[t[1].channels[1]].name, "mail");
    assert_int_equal(t[1].escalate_after_ms, 900000);
    assert_int_equal(t[2].escalate_after_ms, 3600000);
    assert_int_equal(t[2].group_wait_ms, 30000);
    assert_int_equal(a->rules[GW_EVENT_BREAKER_OPEN].tier, GW_TIER_P1);
    assert_int_equal(a->rules[GW_EVENT_NO_HEALTHY_HOSTS].tier, GW_TIER_P0);
    assert_int_equal(a->rules[GW_EVENT_HOST_DOWN].tier, GW_TIER_P2);
    assert_int_equal(a->rules[GW_EVENT_WORKER_CRASH].tier, GW_TIER_P0);
    assert_int_equal(a->rules[GW_EVENT_WORKER_STALL].tier, GW_TIER_P1);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].tier, GW_TIER_P2);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].ratio_ppm, 200000);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].for_ms, 60000);
    assert_int_equal(a->rules[GW_EVENT_DELIVERY_FAILING].tier, GW_TIER_P1);
    /* not in the example: their defaults */
    assert_int_equal(a->rules[GW_EVENT_CRASH_LOOP].tier, GW_TIER_P0);
    assert_int_equal(a->rules[GW_EVENT_HANDLER_FAULT].tier, GW_TIER_P2);
    for (int e = 0; e < GW_EVENT_KIND_COUNT; e++)
        assert_true(a->rules[e].defined);
    assert_int_equal(a->delivery.max_attempts, 0);
    assert_int_equal(a->delivery.max_age_ms, 86400000);
    assert_int_equal(a->delivery.backoff_ms, 1000);
    assert_int_equal(a->delivery.max_backoff_ms, 300000);
    assert_int_equal(a->retention_ms, 30ull * 86400000);
}

static void spec_example_loads_with_every_value(void **state)
{
    result_t r;
    gw_config_t *c;
    (void)state;
    setenv("BW_ADMIN_TOKEN", "adm-token", 1);
    setenv("SLACK_URL", "https://hooks.slack.com/services/T/B/X", 1);
    setenv("DING_SECRET", "ding-secret", 1);
    setenv("PD_KEY", "pd-key", 1);
    setenv("OG_KEY", "og-key", 1);
    c = load_ok(spec_example, &r);
    check_spec_top(c);
    assert_int_equal(c->nupstreams, 1);
    check_spec_upstream(&c->upstreams[0]);
    check_spec_breaker(&c->upstreams[0].breaker);
    assert_int_equal(c->nroutes, 1);
    check_spec_route(&c->routes[0]);
    check_spec_channels(&c->alerts);
    check_spec_tiers_rules(&c->alerts);
    release(&r);
}

static void embedded_default_loads(void **state)
{
    gw_config_t *c = NULL;
    gw_diag_t d;
    (void)state;
    gw_diag_init(&d);
    assert_int_equal(gw_config_load_string("<default>", gw_default_config_yaml,
                                           strlen(gw_default_config_yaml), &c, &d),
                     0);
    assert_int_equal(d.n, 0);
    assert_string_equal(c->source, "<default>");
    assert_string_equal(c->listen[0].text, "127.0.0.1:8080");
    assert_int_equal(c->workers, 2);
    assert_string_equal(c->admin_listen.text, "127.0.0.1:9901");
    assert_null(c->admin_token);
    assert_string_equal(c->state_dir, "./var");
    assert_int_equal(c->nupstreams, 1);
    assert_string_equal(c->upstreams[0].name, "demo");
    assert_string_equal(c->upstreams[0].hosts[0].text, "127.0.0.1:9001");
    assert_true(c->upstreams[0].health_check.enabled);
    assert_string_equal(c->upstreams[0].health_check.path, "/health");
    assert_int_equal(c->nroutes, 1);
    assert_string_equal(c->routes[0].path_prefix, "/");
    assert_int_equal(c->routes[0].upstream_index, 0);
    assert_int_equal(c->alerts.nchannels, 1);
    assert_string_equal(c->alerts.channels[0].name, "log");
    assert_int_equal(c->alerts.channels[0].type, GW_CHANNEL_CONSOLE);
    for (int t = 0; t < GW_TIER_COUNT; t++) {
        assert_true(c->alerts.tiers[t].defined);
        assert_int_equal(c->alerts.tiers[t].nchannels, 1);
    }
    for (int e = 0; e < GW_EVENT_KIND_COUNT; e++)
        assert_true(c->alerts.rules[e].defined);
    gw_config_free(c);
    gw_diag_dispose(&d);
}

static void check_default_upstream(const gw_upstream_config_t *u)
{
    static const uint16_t st[] = {500, 502, 503, 504};
    const gw_breaker_config_t *b = &u->breaker;
    assert_int_equal(u->connect_timeout_ms, 1000);
    assert_int_equal(u->timeout_ms, 5000);
    assert_int_equal(u->max_concurrent, 1000);
    assert_int_equal(u->nfailure_statuses, 4);
    assert_memory_equal(u->failure_statuses, st, sizeof st);
    assert_false(u->health_check.enabled);
    assert_int_equal(u->outlier.consecutive_failures, 5);
    assert_int_equal(u->outlier.ejection_ms, 30000);
    assert_int_equal(u->outlier.max_ejected_ppm, 500000);
    assert_int_equal(b->consecutive_failures, 5);
    assert_int_equal(b->failure_rate_ppm, 500000);
    assert_int_equal(b->window_ms, 10000);
    assert_int_equal(b->min_calls, 20);
    assert_int_equal(b->slow_call_duration_ms, 2000);
    assert_int_equal(b->slow_call_rate_ppm, GW_PPM_ONE);
    assert_int_equal(b->open_duration_ms, 5000);
    assert_int_equal(b->max_open_duration_ms, 120000);
    assert_int_equal(b->half_open_requests, 2);
}

static void check_default_alerts(const gw_alerts_config_t *a)
{
    static const gw_tier_t tiers[GW_EVENT_KIND_COUNT] = {
        GW_TIER_P1, GW_TIER_P0, GW_TIER_P2, GW_TIER_P0, GW_TIER_P1,
        GW_TIER_P2, GW_TIER_P1, GW_TIER_P0, GW_TIER_P2, GW_TIER_P1};
    assert_null(a->external_url);
    assert_int_equal(a->nchannels, 1);
    assert_string_equal(a->channels[0].name, "console");
    assert_int_equal(a->channels[0].type, GW_CHANNEL_CONSOLE);
    for (int t = 0; t < GW_TIER_COUNT; t++) {
        assert_true(a->tiers[t].defined);
        assert_int_equal(a->tiers[t].nchannels, 1);
        assert_int_equal(a->tiers[t].channels[0], 0);
    }
    assert_int_equal(a->tiers[0].repeat_ms, 300000);
    assert_int_equal(a->tiers[1].escalate_after_ms, 900000);
    assert_int_equal(a->tiers[2].escalate_after_ms, 3600000);
    for (int e = 0; e < GW_EVENT_KIND_COUNT; e++) {
        assert_true(a->rules[e].defined);
        assert_int_equal(a->rules[e].tier, tiers[e]);
    }
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].ratio_ppm, 200000);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].for_ms, 60000);
    assert_int_equal(a->delivery.max_attempts, 0);
    assert_int_equal(a->delivery.max_age_ms, 86400000);
    assert_int_equal(a->delivery.backoff_ms, 1000);
    assert_int_equal(a->delivery.max_backoff_ms, 300000);
    assert_int_equal(a->retention_ms, 30ull * 86400000);
}

static void defaults_are_applied_to_a_minimal_config(void **state)
{
    result_t r;
    gw_config_t *c;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    (void)state;
    c = load_ok(UP RT, &r);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].text, "127.0.0.1:8080");
    assert_int_equal(c->workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    assert_int_equal(c->shutdown_timeout_ms, 10000);
    assert_string_equal(c->state_dir, "./var");
    assert_string_equal(c->admin_listen.text, "127.0.0.1:9901");
    assert_null(c->admin_token);
    assert_int_equal(c->stall_after_ms, 2000);
    assert_false(c->debug_fault_headers);
    check_default_upstream(&c->upstreams[0]);
    assert_int_equal(c->routes[0].timeout_ms, 5000); /* the upstream's */
    assert_null(c->routes[0].host);
    assert_false(c->routes[0].rate_limit.enabled);
    assert_int_equal(c->routes[0].fault.abort_status, 0);
    assert_int_equal(c->routes[0].fault.delay_ppm, 0);
    check_default_alerts(&c->alerts);
    release(&r);
}

static void health_check_present_gets_its_defaults(void **state)
{
    result_t r;
    gw_config_t *c;
    (void)state;
    c = load_ok("upstreams:\n  u: { hosts: [\"127.0.0.1:9001\"], health_check: {} }\n" RT, &r);
    assert_true(c->upstreams[0].health_check.enabled);
    assert_string_equal(c->upstreams[0].health_check.path, "/health");
    assert_int_equal(c->upstreams[0].health_check.interval_ms, 2000);
    assert_int_equal(c->upstreams[0].health_check.timeout_ms, 500);
    assert_int_equal(c->upstreams[0].health_check.healthy_threshold, 2);
    assert_int_equal(c->upstreams[0].health_check.unhealthy_threshold, 3);
    release(&r);
}

static void route_details_are_resolved(void **state)
{
    result_t r;
    const gw_route_config_t *rt;
    (void)state;
    load_ok("upstreams:\n"
            "  a: { hosts: [\"127.0.0.1:9001\"] }\n"
            "  b: { hosts: [\"[::1]:9002\"], timeout: 7s, failure_statuses: [503, 500, 503] }\n"
            "routes:\n"
            "  - name: r\n"
            "    match: { path_prefix: /x, host: API.Example.COM }\n"
            "    upstream: b\n"
            "    rate_limit: { rate: 6000/m, key: \"header:X-Api-Key\" }\n",
            &r);
    rt = &r.cfg->routes[0];
    assert_int_equal(rt->upstream_index, 1);
    assert_int_equal(rt->timeout_ms, 7000);
    assert_string_equal(rt->host, "api.example.com");
    assert_int_equal(rt->rate_limit.rate.tokens, 6000);
    assert_int_equal(rt->rate_limit.rate.period_ms, 60000);
    assert_int_equal(rt->rate_limit.burst, 6000);
    assert_int_equal(rt->rate_limit.key, GW_RL_KEY_HEADER);
    assert_string_equal(rt->rate_limit.key_header, "x-api-key");
    assert_int_equal(rt->rate_limit.max_keys, 100000);
    assert_int_equal(r.cfg->upstreams[1].nfailure_statuses, 2);
    assert_int_equal(r.cfg->upstreams[1].failure_statuses[0], 500);
    assert_int_equal(r.cfg->upstreams[1].failure_statuses[1], 503);
    assert_int_equal(r.cfg->upstreams[1].hosts[0].family, AF_INET6);
    release(&r);
}

static void rules_can_be_turned_off_and_take_map_form(void **state)
{
    result_t r;
    const gw_alerts_config_t *a;
    (void)state;
    load_ok(UP RT "alerts:\n  channels: { log: { type: console, rate_limit: 20/m } }\n" TIERS
                  "  rules:\n    host_down: \"off\"\n    breaker_open: { tier: P0 }\n"
                  "    rate_limited: { tier: P1, ratio: 12.5% }\n",
            &r);
    a = &r.cfg->alerts;
    assert_false(a->rules[GW_EVENT_HOST_DOWN].defined);
    assert_true(a->rules[GW_EVENT_BREAKER_OPEN].defined);
    assert_int_equal(a->rules[GW_EVENT_BREAKER_OPEN].tier, GW_TIER_P0);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].tier, GW_TIER_P1);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].ratio_ppm, 125000);
    assert_int_equal(a->rules[GW_EVENT_RATE_LIMITED].for_ms, 60000);
    assert_int_equal(a->channels[0].rate_limit.tokens, 20);
    assert_int_equal(a->channels[0].rate_limit.period_ms, 60000);
    assert_int_equal(a->delivery.max_age_ms, 86400000);
    release(&r);
}

static void free_accepts_null(void **state)
{
    (void)state;
    gw_config_free(NULL);
    assert_string_equal(gw_event_kind_name(GW_EVENT_HANDLER_FAULT), "handler_fault");
    assert_null(gw_event_kind_name(GW_EVENT_KIND_COUNT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(unknown_key_in_upstream_is_reported_at_the_key),
        cmocka_unit_test(unknown_top_level_key_is_reported),
        cmocka_unit_test(unknown_key_in_nested_flow_mapping_is_reported),
        cmocka_unit_test(string_where_a_list_belongs_is_a_type_error),
        cmocka_unit_test(quoted_integer_is_a_type_error),
        cmocka_unit_test(mapping_where_a_duration_belongs_is_a_type_error),
        cmocka_unit_test(bad_duration_is_reported_at_the_value),
        cmocka_unit_test(zero_timeout_is_rejected),
        cmocka_unit_test(bad_rate_is_reported_at_the_value),
        cmocka_unit_test(bad_ratio_is_reported_at_the_value),
        cmocka_unit_test(bad_address_is_reported_at_the_item),
        cmocka_unit_test(duplicate_listen_address_is_rejected),
        cmocka_unit_test(workers_out_of_range_is_rejected),
        cmocka_unit_test(boolean_must_be_true_or_false),
        cmocka_unit_test(failure_status_out_of_range_is_rejected),
        cmocka_unit_test(abort_status_below_200_is_rejected),
        cmocka_unit_test(percent_above_100_is_rejected),
        cmocka_unit_test(half_written_fault_is_rejected),
        cmocka_unit_test(path_prefix_must_start_with_slash),
        cmocka_unit_test(host_with_port_is_rejected),
        cmocka_unit_test(bad_rate_limit_key_is_rejected),
        cmocka_unit_test(burst_zero_is_rejected),
        cmocka_unit_test(health_timeout_must_be_below_interval),
        cmocka_unit_test(health_threshold_zero_is_rejected),
        cmocka_unit_test(max_open_duration_below_open_duration_is_rejected),
        cmocka_unit_test(half_open_requests_zero_is_rejected),
        cmocka_unit_test(undefined_upstream_reference_is_reported_at_the_value),
        cmocka_unit_test(duplicate_route_name_is_reported_at_the_second),
        cmocka_unit_test(duplicate_upstream_name_is_reported_at_the_second),
        cmocka_unit_test(duplicate_key_in_a_mapping_is_reported),
        cmocka_unit_test(invalid_upstream_name_is_rejected),
        cmocka_unit_test(missing_upstreams_and_routes_are_both_reported),
        cmocka_unit_test(empty_routes_list_is_rejected),
        cmocka_unit_test(route_without_name_is_rejected),
        cmocka_unit_test(undefined_channel_in_tier_is_reported_at_the_name),
        cmocka_unit_test(unknown_tier_name_is_rejected),
        cmocka_unit_test(unknown_rule_event_is_reported_at_the_key),
        cmocka_unit_test(rule_naming_an_undefined_tier_is_rejected),
        cmocka_unit_test(store_degraded_rule_falls_back_to_a_defined_tier),
        cmocka_unit_test(ratio_is_only_for_rate_limited),
        cmocka_unit_test(missing_required_channel_keys_are_each_reported),
        cmocka_unit_test(key_not_taken_by_the_channel_type_is_rejected),
        cmocka_unit_test(unknown_channel_type_is_rejected),
        cmocka_unit_test(channel_url_needs_http_scheme),
        cmocka_unit_test(email_needs_smtp_url),
        cmocka_unit_test(duplicate_channel_is_rejected),
        cmocka_unit_test(alerts_without_tiers_is_rejected),
        cmocka_unit_test(escalating_p0_is_rejected),
        cmocka_unit_test(unset_env_var_is_reported_with_its_name_and_position),
        cmocka_unit_test(env_vars_are_substituted_in_strings),
        cmocka_unit_test(env_vars_work_in_integers_booleans_and_durations),
        cmocka_unit_test(env_vars_are_not_substituted_in_keys),
        cmocka_unit_test(unterminated_reference_is_rejected),
        cmocka_unit_test(non_loopback_admin_without_token_is_rejected),
        cmocka_unit_test(non_loopback_admin_with_empty_token_is_rejected),
        cmocka_unit_test(loopback_admin_needs_no_token),
        cmocka_unit_test(yaml_syntax_error_has_a_position),
        cmocka_unit_test(tab_indentation_is_a_syntax_error),
        cmocka_unit_test(empty_config_is_rejected),
        cmocka_unit_test(root_must_be_a_mapping),
        cmocka_unit_test(second_document_is_rejected),
        cmocka_unit_test(unreadable_file_is_reported_at_0_0),
        cmocka_unit_test(file_is_loaded_and_named_in_diagnostics),
        cmocka_unit_test(every_error_is_reported_in_file_order),
        cmocka_unit_test(errors_of_every_section_are_collected),
        cmocka_unit_test(spec_example_loads_with_every_value),
        cmocka_unit_test(embedded_default_loads),
        cmocka_unit_test(defaults_are_applied_to_a_minimal_config),
        cmocka_unit_test(health_check_present_gets_its_defaults),
        cmocka_unit_test(route_details_are_resolved),
        cmocka_unit_test(rules_can_be_turned_off_and_take_map_form),
        cmocka_unit_test(free_accepts_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
