/*
 * test_gateway_config_values.c - the strict value parsers, ${VAR} expansion and the diagnostic
 * list of the config loader (gateway/config_values.c).
 *
 * Table-driven: each case is an input and the expected result (or a rejection). The edge cases
 * are the ones a hand-written parser gets wrong: missing units, signs, spaces, fractions, overflow,
 * port 0, host names where numbers belong, and outputs touched on failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "config_int.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define NCASES(t) (sizeof(t) / sizeof((t)[0]))

static void durations_parse_to_milliseconds(void **state)
{
    static const struct {
        const char *in;
        uint64_t ms;
    } ok[] = {{"250ms", 250},
              {"5s", 5000},
              {"2m", 120000},
              {"1h", 3600000},
              {"1d", 86400000},
              {"0s", 0},
              {"0ms", 0},
              {"007s", 7000},
              {"18446744073709551615ms", UINT64_MAX},
              {"30d", 2592000000u},
              {"213503982334d", 213503982334ull * 86400000}};
    (void)state;
    for (size_t i = 0; i < NCASES(ok); i++) {
        uint64_t v = 1;
        assert_int_equal(gw_parse_duration_ms(ok[i].in, &v), 0);
        assert_int_equal(v, ok[i].ms);
    }
}

static void malformed_durations_are_rejected(void **state)
{
    static const char *const bad[] = {
        "5",
        "5 s",
        " 5s",
        "5s ",
        "-1s",
        "+1s",
        "1.5s",
        "s",
        "",
        "5S",
        "5sec",
        "5us",
        "1w",
        "5ms5",
        "0x5s",
        "18446744073709551616ms", /* digits overflow */
        "213503982335d",          /* product overflows */
        "18446744073709552s",
    };
    (void)state;
    for (size_t i = 0; i < NCASES(bad); i++) {
        uint64_t v = 42;
        if (gw_parse_duration_ms(bad[i], &v) == 0)
            fail_msg("accepted duration '%s'", bad[i]);
        assert_int_equal(v, 42); /* untouched */
    }
    assert_int_equal(gw_parse_duration_ms(NULL, &(uint64_t){0}), -1);
}

static void rates_parse_to_tokens_per_period(void **state)
{
    gw_rate_t r = {0, 0};
    (void)state;
    assert_int_equal(gw_parse_rate("100/s", &r), 0);
    assert_int_equal(r.tokens, 100);
    assert_int_equal(r.period_ms, 1000);
    assert_int_equal(gw_parse_rate("6000/m", &r), 0);
    assert_int_equal(r.tokens, 6000);
    assert_int_equal(r.period_ms, 60000);
    assert_int_equal(gw_parse_rate("1/h", &r), 0);
    assert_int_equal(r.tokens, 1);
    assert_int_equal(r.period_ms, 3600000);
    assert_int_equal(gw_parse_rate("4294967295/s", &r), 0);
    assert_int_equal(r.tokens, UINT32_MAX);
}

static void malformed_rates_are_rejected(void **state)
{
    static const char *const bad[] = {"0/s",    "100",     "100/",         "/s",
                                      "100/d",  "1.5/s",   "-1/s",         "100 /s",
                                      "100/ s", "100/sec", "4294967296/s", "99999999999999999999/s",
                                      ""};
    (void)state;
    for (size_t i = 0; i < NCASES(bad); i++) {
        gw_rate_t r = {7, 7};
        if (gw_parse_rate(bad[i], &r) == 0)
            fail_msg("accepted rate '%s'", bad[i]);
        assert_int_equal(r.tokens, 7);
    }
}

static void ratios_parse_to_parts_per_million(void **state)
{
    static const struct {
        const char *in;
        uint32_t ppm;
    } ok[] = {{"0%", 0},           {"50%", 500000},        {"12.5%", 125000}, {"100%", 1000000},
              {"100.0%", 1000000}, {"100.0000%", 1000000}, {"0.0001%", 1},    {"33.3333%", 333333},
              {"1%", 10000},       {"5.25%", 52500}};
    (void)state;
    for (size_t i = 0; i < NCASES(ok); i++) {
        uint32_t v = 1;
        assert_int_equal(gw_parse_ratio_ppm(ok[i].in, &v), 0);
        assert_int_equal(v, ok[i].ppm);
    }
}

static void malformed_ratios_are_rejected(void **state)
{
    static const char *const bad[] = {"100.0001%",
                                      "101%",
                                      "50",
                                      "50 %",
                                      "-1%",
                                      ".5%",
                                      "5.%",
                                      "0.00001%",
                                      "50%%",
                                      "1e2%",
                                      "",
                                      "%",
                                      "99999999999999999999%"};
    (void)state;
    for (size_t i = 0; i < NCASES(bad); i++) {
        uint32_t v = 9;
        if (gw_parse_ratio_ppm(bad[i], &v) == 0)
            fail_msg("accepted ratio '%s'", bad[i]);
        assert_int_equal(v, 9);
    }
}

static void percentages_take_the_sign_optionally(void **state)
{
    uint32_t v = 0;
    (void)state;
    assert_int_equal(gw_cfg_parse_percent("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(gw_cfg_parse_percent("12.5", &v), 0);
    assert_int_equal(v, 125000);
    assert_int_equal(gw_cfg_parse_percent("100%", &v), 0);
    assert_int_equal(v, 1000000);
    assert_int_equal(gw_cfg_parse_percent("101", &v), -1);
    assert_int_equal(gw_cfg_parse_percent("5%x", &v), -1);
    assert_int_equal(gw_cfg_parse_percent("", &v), -1);
}

static void integers_are_digits_only(void **state)
{
    uint64_t v = 0;
    (void)state;
    assert_int_equal(gw_cfg_parse_uint("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(gw_cfg_parse_uint("18446744073709551615", &v), 0);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(gw_cfg_parse_uint("18446744073709551616", &v), -1);
    assert_int_equal(gw_cfg_parse_uint("-1", &v), -1);
    assert_int_equal(gw_cfg_parse_uint("+1", &v), -1);
    assert_int_equal(gw_cfg_parse_uint("1 ", &v), -1);
    assert_int_equal(gw_cfg_parse_uint("", &v), -1);
}

static void addresses_are_numeric_with_a_port(void **state)
{
    char host[64];
    uint16_t port = 0;
    int fam = 0;
    (void)state;
    assert_int_equal(gw_parse_addr("1.2.3.4:80", host, sizeof host, &port, &fam), 0);
    assert_string_equal(host, "1.2.3.4");
    assert_int_equal(port, 80);
    assert_int_equal(fam, AF_INET);
    assert_int_equal(gw_parse_addr("[::1]:80", host, sizeof host, &port, &fam), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(fam, AF_INET6);
    assert_int_equal(gw_parse_addr("[0:0::0001]:65535", host, sizeof host, &port, &fam), 0);
    assert_string_equal(host, "::1"); /* normalised */
    assert_int_equal(port, 65535);
    assert_int_equal(gw_parse_addr("[::ffff:10.0.0.1]:1", host, sizeof host, &port, &fam), 0);
    assert_string_equal(host, "::ffff:10.0.0.1");
}

static void malformed_addresses_are_rejected(void **state)
{
    static const char *const bad[] = {
        "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4",    "host:80",      "localhost:80",
        "1.2.3:80",  "1.2.3.4:",      ":80",        "[::1]",        "[::1]80",
        "::1:80",    "[1.2.3.4]:80",  "1.2.3.4:-1", "1.2.3.4: 80",  " 1.2.3.4:80",
        "[::1:80",   "[]:80",         "1.2.3.4:8x", "256.1.1.1:80", "[fe80::1%eth0]:80",
        "",
    };
    (void)state;
    for (size_t i = 0; i < NCASES(bad); i++) {
        char host[64] = "untouched";
        uint16_t port = 5;
        int fam = 5;
        if (gw_parse_addr(bad[i], host, sizeof host, &port, &fam) == 0)
            fail_msg("accepted address '%s'", bad[i]);
        assert_string_equal(host, "untouched");
        assert_int_equal(port, 5);
        assert_int_equal(fam, 5);
    }
}

static void address_host_must_fit_the_buffer(void **state)
{
    char host[4];
    uint16_t port;
    int fam;
    (void)state;
    assert_int_equal(gw_parse_addr("[::1]:80", host, sizeof host, &port, &fam), 0);
    assert_int_equal(gw_parse_addr("10.0.0.1:80", host, sizeof host, &port, &fam), -1);
}

static void loopback_addresses_are_recognised(void **state)
{
    (void)state;
    assert_true(gw_cfg_addr_is_loopback(AF_INET, "127.0.0.1"));
    assert_true(gw_cfg_addr_is_loopback(AF_INET, "127.255.0.9"));
    assert_true(gw_cfg_addr_is_loopback(AF_INET6, "::1"));
    assert_true(gw_cfg_addr_is_loopback(AF_INET6, "::ffff:127.0.0.1"));
    assert_false(gw_cfg_addr_is_loopback(AF_INET, "0.0.0.0"));
    assert_false(gw_cfg_addr_is_loopback(AF_INET, "10.0.0.1"));
    assert_false(gw_cfg_addr_is_loopback(AF_INET6, "::"));
    assert_false(gw_cfg_addr_is_loopback(AF_INET6, "::ffff:10.0.0.1"));
}

/* Expands s; returns a static copy of the result, or NULL with the error in err. */
static const char *expand(const char *s, char *err, size_t errcap)
{
    static char out[256];
    ssize_t n = gw_cfg_expand_env(s, strlen(s), NULL, 0, err, errcap);
    if (n < 0)
        return NULL;
    assert_true((size_t)n < sizeof out);
    assert_int_equal(gw_cfg_expand_env(s, strlen(s), out, sizeof out, err, errcap), n);
    assert_int_equal(strlen(out), (size_t)n);
    return out;
}

static void env_references_are_expanded(void **state)
{
    char err[128];
    (void)state;
    setenv("BW_T_A", "alpha", 1);
    setenv("BW_T_EMPTY", "", 1);
    unsetenv("BW_T_UNSET");
    assert_string_equal(expand("${BW_T_A}", err, sizeof err), "alpha");
    assert_string_equal(expand("Bearer ${BW_T_A}!", err, sizeof err), "Bearer alpha!");
    assert_string_equal(expand("${BW_T_A}${BW_T_A}", err, sizeof err), "alphaalpha");
    assert_string_equal(expand("${BW_T_UNSET:-x y}", err, sizeof err), "x y");
    assert_string_equal(expand("${BW_T_UNSET:-}", err, sizeof err), "");
    assert_string_equal(expand("${BW_T_EMPTY:-d}", err, sizeof err), "d");
    assert_string_equal(expand("${BW_T_EMPTY}", err, sizeof err), "");
    assert_string_equal(expand("${BW_T_A:-d}", err, sizeof err), "alpha");
    assert_string_equal(expand("$$", err, sizeof err), "$");
    assert_string_equal(expand("a$$${BW_T_A}", err, sizeof err), "a$alpha");
    assert_string_equal(expand("$${BW_T_A}", err, sizeof err), "${BW_T_A}");
    assert_string_equal(expand("cost: 5$", err, sizeof err), "cost: 5$");
    assert_string_equal(expand("$HOME", err, sizeof err), "$HOME");
    assert_string_equal(expand("", err, sizeof err), "");
}

static void bad_env_references_are_errors(void **state)
{
    char err[128];
    (void)state;
    unsetenv("BW_T_UNSET");
    assert_null(expand("x ${BW_T_UNSET} y", err, sizeof err));
    assert_string_equal(err, "environment variable 'BW_T_UNSET' is not set");
    assert_null(expand("${BW_T_A", err, sizeof err));
    assert_non_null(strstr(err, "unterminated"));
    assert_null(expand("${}", err, sizeof err));
    assert_non_null(strstr(err, "invalid environment variable name ''"));
    assert_null(expand("${1X}", err, sizeof err));
    assert_null(expand("${A-B}", err, sizeof err));
    assert_null(expand("${:-x}", err, sizeof err));
}

static void expansion_output_is_truncated_safely(void **state)
{
    char out[4], err[64];
    (void)state;
    setenv("BW_T_A", "alpha", 1);
    assert_int_equal(gw_cfg_expand_env("${BW_T_A}", 9, out, sizeof out, err, sizeof err), 5);
    assert_string_equal(out, "alp");
}

static void diagnostics_are_formatted_sorted_and_moved(void **state)
{
    gw_diag_t a, b;
    (void)state;
    gw_diag_init(&a);
    gw_diag_init(&b);
    gw_diag_add(&a, "x:y.yaml", 10, 2, "third %d", 3);
    gw_diag_add(&a, "x:y.yaml", 2, 9, "second");
    gw_diag_add(&a, "x:y.yaml", 2, 1, "first");
    gw_diag_add(&a, "x:y.yaml", 0, 0, "zero");
    gw_diag_add(&a, "x:y.yaml", 2, 1, "first again");
    gw_diag_add(NULL, "x", 1, 1, "ignored");
    gw_cfg_diag_sort(&a, strlen("x:y.yaml"));
    assert_int_equal(a.n, 5);
    assert_string_equal(a.items[0], "x:y.yaml:0:0: zero");
    assert_string_equal(a.items[1], "x:y.yaml:2:1: first");
    assert_string_equal(a.items[2], "x:y.yaml:2:1: first again");
    assert_string_equal(a.items[3], "x:y.yaml:2:9: second");
    assert_string_equal(a.items[4], "x:y.yaml:10:2: third 3");
    gw_diag_add(&b, "b", 1, 1, "pre");
    gw_cfg_diag_move(&b, &a);
    assert_int_equal(a.n, 0);
    assert_null(a.items);
    assert_int_equal(b.n, 6);
    assert_string_equal(b.items[0], "b:1:1: pre");
    assert_string_equal(b.items[5], "x:y.yaml:10:2: third 3");
    gw_diag_add(&a, "c", 1, 1, "dropped");
    gw_cfg_diag_move(NULL, &a);
    assert_int_equal(a.n, 0);
    gw_diag_dispose(&b);
    gw_diag_dispose(&b); /* idempotent */
    gw_diag_dispose(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(durations_parse_to_milliseconds),
        cmocka_unit_test(malformed_durations_are_rejected),
        cmocka_unit_test(rates_parse_to_tokens_per_period),
        cmocka_unit_test(malformed_rates_are_rejected),
        cmocka_unit_test(ratios_parse_to_parts_per_million),
        cmocka_unit_test(malformed_ratios_are_rejected),
        cmocka_unit_test(percentages_take_the_sign_optionally),
        cmocka_unit_test(integers_are_digits_only),
        cmocka_unit_test(addresses_are_numeric_with_a_port),
        cmocka_unit_test(malformed_addresses_are_rejected),
        cmocka_unit_test(address_host_must_fit_the_buffer),
        cmocka_unit_test(loopback_addresses_are_recognised),
        cmocka_unit_test(env_references_are_expanded),
        cmocka_unit_test(bad_env_references_are_errors),
        cmocka_unit_test(expansion_output_is_truncated_safely),
        cmocka_unit_test(diagnostics_are_formatted_sorted_and_moved),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
