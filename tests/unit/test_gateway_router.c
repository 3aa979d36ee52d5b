/*
 * test_gateway_router.c - route selection: first match, segment-aware prefixes, host matching.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "router.h"

static const char yaml[] = "upstreams:\n"
                           "  a: { hosts: [\"127.0.0.1:9001\"] }\n"
                           "routes:\n"
                           "  - { name: users-internal, match: { path_prefix: /api/users, host: "
                           "api.internal }, upstream: a }\n"
                           "  - { name: users, match: { path_prefix: /api/users }, upstream: a }\n"
                           "  - { name: static, match: { path_prefix: /static/ }, upstream: a }\n"
                           "  - { name: root, match: { path_prefix: / }, upstream: a }\n";

static int setup(void **state)
{
    gw_config_t *cfg = NULL;
    gw_diag_t diag;
    gw_diag_init(&diag);
    int r = gw_config_load_string("router.yaml", yaml, strlen(yaml), &cfg, &diag);
    for (size_t i = 0; i < diag.n; i++)
        print_error("%s\n", diag.items[i]);
    gw_diag_dispose(&diag);
    if (r != 0)
        return -1;
    *state = cfg;
    return 0;
}

static int teardown(void **state)
{
    gw_config_free(*state);
    return 0;
}

static int match(void **state, const char *host, const char *path)
{
    gw_router_t r;
    gw_router_init(&r, *state);
    return gw_router_match(&r, host, host != NULL ? strlen(host) : 0, path, strlen(path));
}

static void prefix_matches_whole_segments_only(void **state)
{
    assert_true(gw_path_prefix_matches("/api/users", "/api/users", 10));
    assert_true(gw_path_prefix_matches("/api/users", "/api/users/7", 12));
    assert_true(gw_path_prefix_matches("/api/users", "/api/users?x=1", 14));
    assert_false(gw_path_prefix_matches("/api/users", "/api/usersettings", 17));
    assert_false(gw_path_prefix_matches("/api/users", "/api/user", 9));
    assert_true(gw_path_prefix_matches("/static/", "/static/a.css", 13));
    assert_false(gw_path_prefix_matches("/static/", "/static", 7));
    assert_true(gw_path_prefix_matches("/", "/anything", 9));
}

static void first_matching_route_wins(void **state)
{
    assert_int_equal(match(state, "api.internal", "/api/users/1"), 0);
    assert_int_equal(match(state, "other.host", "/api/users/1"), 1);
    assert_int_equal(match(state, NULL, "/api/users"), 1);
    assert_int_equal(match(state, NULL, "/static/x.js"), 2);
    assert_int_equal(match(state, NULL, "/api/usersettings"), 3);
}

static void host_match_ignores_case_and_port(void **state)
{
    assert_int_equal(match(state, "API.Internal:8080", "/api/users"), 0);
    assert_int_equal(match(state, "api.internal.evil", "/api/users"), 1);
    assert_int_equal(match(state, "[::1]:8080", "/api/users"), 1);
}

static void no_route_when_nothing_matches(void **state)
{
    static const char only_api[] = "upstreams:\n  a: { hosts: [\"127.0.0.1:9001\"] }\n"
                                   "routes:\n  - { name: api, match: { path_prefix: /api }, "
                                   "upstream: a }\n";
    gw_config_t *cfg = NULL;
    gw_diag_t diag;
    gw_diag_init(&diag);
    assert_int_equal(gw_config_load_string("x.yaml", only_api, strlen(only_api), &cfg, &diag), 0);
    gw_diag_dispose(&diag);
    gw_router_t r;
    gw_router_init(&r, cfg);
    assert_int_equal(gw_router_match(&r, NULL, 0, "/", 1), -1);
    assert_int_equal(gw_router_match(&r, NULL, 0, "/apix", 5), -1);
    assert_int_equal(gw_router_match(&r, NULL, 0, "/api/x", 6), 0);
    gw_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prefix_matches_whole_segments_only),
        cmocka_unit_test(first_matching_route_wins),
        cmocka_unit_test(host_match_ignores_case_and_port),
        cmocka_unit_test(no_route_when_nothing_matches),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
