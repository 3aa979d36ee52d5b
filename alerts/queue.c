/*
 * queue.c - the bounded memory queue that holds inputs while the store is unavailable.
 *
 * Why: when SQLite answers busy, full or I/O error, an event or an external alert must not be
 * lost just because the disk hiccuped, and the caller (the events drain, an admin request) must
 * not block. The input is copied here and applied, in arrival order, when the store recovers.
 *
 * Bounds: at most `cap` entries and `max_bytes` of payload. When either is reached the new input
 * is dropped and counted (dropped): the older inputs keep their order, and the count is exported
 * so the loss is visible. Retries back off from 250 ms, doubling to 30 s, so a full disk costs one
 * failed transaction per interval, not one per event.
 *
 * Invariant: while the queue is not empty, new inputs go to its tail (never straight to the
 * store), so alerts are applied in the order their inputs arrived.
 */
#include <stdlib.h>
#include <string.h>

#include "alerts_int.h"

#define RETRY_FIRST_MS 250
#define RETRY_MAX_MS 30000

int al_queue_init(al_queue_t *q, size_t cap, size_t max_bytes)
{
    memset(q, 0, sizeof(*q));
    q->ring = calloc(cap, sizeof(*q->ring));
    if (q->ring == NULL)
        return AL_DB_ENOMEM;
    q->cap = cap;
    q->max_bytes = max_bytes;
    return 0;
}

static void entry_free(al_qentry_t *x)
{
    free(x->kind);
    free(x->text);
    memset(x, 0, sizeof(*x));
}

void al_queue_dispose(al_queue_t *q)
{
    while (q->n > 0)
        al_queue_pop(q);
    free(q->ring);
    q->ring = NULL;
}

int al_queue_push(al_queue_t *q, al_qtype_t type, uint64_t now_ms, int32_t worker, const char *kind,
                  const char *text, size_t len)
{
    size_t klen = kind != NULL ? strlen(kind) : 0, size = len + klen;
    al_qentry_t *x;

    if (q->n == q->cap || q->bytes + size > q->max_bytes) {
        q->dropped++;
        return AL_ELIMIT;
    }
    x = &q->ring[(q->head + q->n) % q->cap];
    x->type = type;
    x->now_ms = now_ms;
    x->worker = worker;
    x->kind = kind != NULL ? strdup(kind) : NULL;
    x->text = malloc(len + 1);
    if ((kind != NULL && x->kind == NULL) || x->text == NULL) {
        entry_free(x);
        q->dropped++;
        return AL_DB_ENOMEM;
    }
    if (len > 0)
        memcpy(x->text, text, len);
    x->text[len] = '\0';
    x->len = len;
    q->bytes += size;
    q->n++;
    return 0;
}

al_qentry_t *al_queue_front(al_queue_t *q)
{
    return q->n > 0 ? &q->ring[q->head] : NULL;
}

void al_queue_pop(al_queue_t *q)
{
    al_qentry_t *x = al_queue_front(q);

    if (x == NULL)
        return;
    q->bytes -= x->len + (x->kind != NULL ? strlen(x->kind) : 0);
    entry_free(x);
    q->head = (q->head + 1) % q->cap;
    q->n--;
}

void al_queue_backoff(al_queue_t *q, uint64_t now_ms)
{
    q->backoff_ms = q->backoff_ms == 0                 ? RETRY_FIRST_MS
                    : q->backoff_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS
                                                       : q->backoff_ms * 2;
    q->retry_at = now_ms + q->backoff_ms;
}

void al_queue_recovered(al_queue_t *q)
{
    q->backoff_ms = 0;
    q->retry_at = 0;
}
