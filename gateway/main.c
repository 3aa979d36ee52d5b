/*
 * main.c - the command line (SPEC section 1).
 *
 *   breakwater [-c FILE]       run (no -c: ./breakwater.yaml if present, else the embedded default)
 *   breakwater -t [-c FILE]    check the config and exit: 0 valid, 1 invalid (errors on stderr)
 *   breakwater --version | -h
 *
 * Exit statuses: 0 ok, 1 invalid config or start-up failure, 2 bad command line.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <h2o/version.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "supervisor.h"

static void usage(FILE *f)
{
    fputs(
        "usage: breakwater [-c FILE]      run the gateway\n"
        "       breakwater -t [-c FILE]   check the configuration and exit\n"
        "       breakwater --version      print the version\n"
        "       breakwater -h             this help\n"
        "\n"
        "Without -c, ./breakwater.yaml is used if it exists, else the embedded default\n"
        "configuration. Logs are JSON lines on stderr; BREAKWATER_LOG_LEVEL=debug|info|warn|error\n"
        "sets the level.\n",
        f);
}

static int load(const char *path, gw_config_t **cfg)
{
    gw_diag_t diag;
    gw_diag_init(&diag);
    int r = path != NULL ? gw_config_load_file(path, cfg, &diag)
                         : gw_config_load_string("<default>", gw_default_config_yaml,
                                                 strlen(gw_default_config_yaml), cfg, &diag);
    for (size_t i = 0; i < diag.n; i++)
        fprintf(stderr, "%s\n", diag.items[i]);
    gw_diag_dispose(&diag);
    return r;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    int test_only = 0, ch;
    while ((ch = getopt_long(argc, argv, "c:th", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'V':
            printf("breakwater %s (h2o %s, libuv %s)\n", BW_VERSION, H2O_VERSION,
                   uv_version_string());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "breakwater: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (path == NULL && access("breakwater.yaml", F_OK) == 0)
        path = "breakwater.yaml";

    gw_config_t *cfg = NULL;
    if (load(path, &cfg) != 0)
        return 1;
    if (test_only) {
        fprintf(stderr, "%s: configuration ok\n", path != NULL ? path : "<default>");
        gw_config_free(cfg);
        return 0;
    }
    return gw_supervisor_run(cfg, path);
}
