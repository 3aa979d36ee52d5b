/*
 * test_alerts_acklink.c - signed ack links: genuine tokens verify, forged, tampered, truncated
 * and expired ones do not; the secret is created once and kept in the database.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "acklink.h"
#include "db.h"

static const uint8_t secret[AL_ACK_SECRET_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

static void a_genuine_token_verifies_until_it_expires(void **state)
{
    char tok[AL_ACK_TOKEN_MAX];
    int n = al_ack_token_make(secret, 42, 1000, tok, sizeof(tok));
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(tok));
    int64_t id = 0;
    assert_int_equal(al_ack_token_verify(secret, tok, (size_t)n, 999, &id), 0);
    assert_int_equal(id, 42);
    assert_int_equal(al_ack_token_verify(secret, tok, (size_t)n, 1000, &id), 0);
    assert_int_equal(al_ack_token_verify(secret, tok, (size_t)n, 1001, &id), -ETIMEDOUT);
}

static void forged_tampered_and_malformed_tokens_are_refused(void **state)
{
    char tok[AL_ACK_TOKEN_MAX], bad[AL_ACK_TOKEN_MAX];
    int n = al_ack_token_make(secret, 42, 5000, tok, sizeof(tok));
    int64_t id = 0;
    /* another alert id with the same signature */
    snprintf(bad, sizeof(bad), "43%s", tok + 2);
    assert_int_equal(al_ack_token_verify(secret, bad, strlen(bad), 1, &id), -EINVAL);
    /* a later expiry with the same signature */
    strcpy(bad, tok);
    bad[3] = bad[3] == '9' ? '8' : (char)(bad[3] + 1);
    assert_int_equal(al_ack_token_verify(secret, bad, strlen(bad), 1, &id), -EINVAL);
    /* one flipped signature digit */
    strcpy(bad, tok);
    bad[n - 1] = bad[n - 1] == '0' ? '1' : '0';
    assert_int_equal(al_ack_token_verify(secret, bad, strlen(bad), 1, &id), -EINVAL);
    /* another installation's secret */
    uint8_t other[AL_ACK_SECRET_LEN] = {9};
    assert_int_equal(al_ack_token_verify(other, tok, (size_t)n, 1, &id), -EINVAL);
    /* truncated, empty, garbage */
    assert_int_equal(al_ack_token_verify(secret, tok, (size_t)n - 1, 1, &id), -EINVAL);
    assert_int_equal(al_ack_token_verify(secret, "", 0, 1, &id), -EINVAL);
    const char *junk = "x.y.00000000000000000000000000000000";
    assert_int_equal(al_ack_token_verify(secret, junk, strlen(junk), 1, &id), -EINVAL);
}

static void links_need_an_external_url_and_a_secret(void **state)
{
    char buf[256];
    assert_int_equal(al_ack_link("https://gw.example/", 7, 100, buf, sizeof(buf)), 0);
    al_ack_set_secret(secret);
    assert_int_equal(al_ack_link(NULL, 7, 100, buf, sizeof(buf)), 0);
    size_t n = al_ack_link("https://gw.example/", 7, 100, buf, sizeof(buf));
    assert_true(n > 0);
    assert_memory_equal(buf, "https://gw.example/ack/7.", 25);
    int64_t id = 0;
    const char *tok = buf + strlen("https://gw.example/ack/");
    assert_int_equal(al_ack_token_verify(secret, tok, strlen(tok), 100 + AL_ACK_TTL_S, &id), 0);
    assert_int_equal(id, 7);
    assert_int_equal(al_ack_link("https://gw.example", 7, 100, buf, 20), 0); /* too small */
}

static void the_secret_is_created_once_and_kept(void **state)
{
    char dir[] = "/tmp/bw-acklink-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char err[256];
    al_db_t *db = NULL;
    uint8_t a[AL_ACK_SECRET_LEN], b[AL_ACK_SECRET_LEN];
    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), 0);
    assert_int_equal(al_ack_secret_load(db, a), 0);
    assert_int_equal(al_ack_secret_load(db, b), 0);
    assert_memory_equal(a, b, sizeof(a));
    al_db_close(db);
    assert_int_equal(al_db_open(dir, &db, err, sizeof(err)), 0);
    assert_int_equal(al_ack_secret_load(db, b), 0);
    assert_memory_equal(a, b, sizeof(a));
    al_db_close(db);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_genuine_token_verifies_until_it_expires),
        cmocka_unit_test(forged_tampered_and_malformed_tokens_are_refused),
        cmocka_unit_test(links_need_an_external_url_and_a_secret),
        cmocka_unit_test(the_secret_is_created_once_and_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
