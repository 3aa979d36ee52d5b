/*
 * bufpool.c - bounded free list of I/O buffers. See bufpool.h.
 */
#include "bufpool.h"

#include <stdlib.h>

#include "stats.h"

int gw_bufpool_init(gw_bufpool_t *p, size_t max_free, uint64_t *hits, uint64_t *misses)
{
    p->free_list = calloc(max_free > 0 ? max_free : 1, sizeof(void *));
    if (p->free_list == NULL)
        return -1;
    p->nfree = 0;
    p->max_free = max_free;
    p->local_hits = p->local_misses = 0;
    p->hits = hits != NULL ? hits : &p->local_hits;
    p->misses = misses != NULL ? misses : &p->local_misses;
    return 0;
}

void gw_bufpool_dispose(gw_bufpool_t *p)
{
    for (size_t i = 0; i < p->nfree; i++)
        free(p->free_list[i]);
    free(p->free_list);
    p->free_list = NULL;
    p->nfree = 0;
}

char *gw_buf_get(gw_bufpool_t *p)
{
    if (p->nfree > 0) {
        GW_STAT_ADD(*p->hits, 1);
        return p->free_list[--p->nfree];
    }
    GW_STAT_ADD(*p->misses, 1);
    return malloc(GW_BUF_SIZE);
}

void gw_buf_put(gw_bufpool_t *p, char *buf)
{
    if (buf == NULL)
        return;
    if (p->nfree < p->max_free)
        p->free_list[p->nfree++] = buf;
    else
        free(buf);
}
