/*
 * query.c - query-string parameters. See query.h.
 */
#include "query.h"

#include <string.h>

/* Parameter `name` in the &-separated text q..end (gw_query_param's results). */
static int find_param(const char *q, const char *end, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);

    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q)), *stop = amp != NULL ? amp : end;
        if ((size_t)(stop - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            size_t vlen = (size_t)(stop - q) - nlen - 1;
            if (vlen >= cap)
                return -1;
            memcpy(out, q + nlen + 1, vlen);
            out[vlen] = '\0';
            return 1;
        }
        q = stop + 1;
    }
    return 0;
}

int gw_query_param(h2o_req_t *req, const char *name, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    if (req->query_at == SIZE_MAX)
        return 0;
    return find_param(req->path.base + req->query_at + 1, req->path.base + req->path.len, name, out,
                      cap);
}

int gw_form_param(h2o_req_t *req, const char *name, char *out, size_t cap)
{
    static const char form[] = "application/x-www-form-urlencoded";
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (cap > 0)
        out[0] = '\0';
    if (i < 0 || req->entity.base == NULL || req->headers.entries[i].value.len < sizeof(form) - 1 ||
        !h2o_lcstris(req->headers.entries[i].value.base, sizeof(form) - 1, H2O_STRLIT(form)))
        return 0;
    return find_param(req->entity.base, req->entity.base + req->entity.len, name, out, cap);
}

int64_t gw_query_uint(h2o_req_t *req, const char *name, int64_t dflt)
{
    char buf[20];
    int r = gw_query_param(req, name, buf, sizeof(buf));
    if (r == 0)
        return dflt;
    if (r < 0 || buf[0] == '\0' || strlen(buf) > 18)
        return -1;
    int64_t v = 0;
    for (const char *d = buf; *d != '\0'; d++) {
        if (*d < '0' || *d > '9')
            return -1;
        v = v * 10 + (*d - '0');
    }
    return v;
}
