/*
 * router.c - first-match routing on host + path prefix. See router.h for the rules.
 *
 * A linear scan: route tables are small (tens of entries) and the scan touches only a prefix
 * compare per route, which is cheaper than building and walking a trie at this size.
 */
#include "router.h"

#include <string.h>
#include <strings.h>

void gw_router_init(gw_router_t *r, const gw_config_t *cfg)
{
    r->cfg = cfg;
}

int gw_path_prefix_matches(const char *prefix, const char *path, size_t path_len)
{
    size_t plen = strlen(prefix);
    if (path_len < plen || memcmp(prefix, path, plen) != 0)
        return 0;
    if (path_len == plen || prefix[plen - 1] == '/')
        return 1;
    return path[plen] == '/' || path[plen] == '?';
}

/* Length of the host part of an authority: "example.com:8080" -> 11, "[::1]:80" -> 5. */
static size_t host_part_len(const char *host, size_t len)
{
    if (len > 0 && host[0] == '[') {
        const char *end = memchr(host, ']', len);
        return end != NULL ? (size_t)(end - host) + 1 : len;
    }
    const char *colon = memchr(host, ':', len);
    return colon != NULL ? (size_t)(colon - host) : len;
}

static int host_matches(const char *want, const char *host, size_t host_len)
{
    if (want == NULL)
        return 1;
    if (host == NULL)
        return 0;
    size_t n = host_part_len(host, host_len);
    return strlen(want) == n && strncasecmp(want, host, n) == 0;
}

int gw_router_match(const gw_router_t *r, const char *host, size_t host_len, const char *path,
                    size_t path_len)
{
    for (size_t i = 0; i < r->cfg->nroutes; i++) {
        const gw_route_config_t *route = &r->cfg->routes[i];
        if (host_matches(route->host, host, host_len) &&
            gw_path_prefix_matches(route->path_prefix, path, path_len))
            return (int)i;
    }
    return -1;
}
