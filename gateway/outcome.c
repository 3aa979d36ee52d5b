/*
 * outcome.c - names of outcome kinds (see outcome.h).
 */
#include "outcome.h"

#include <stddef.h>

const char *gw_outcome_kind_name(gw_outcome_kind_t kind)
{
    static const char *const names[GW_OUTCOME_KIND_COUNT] = {
        [GW_OUTCOME_RESPONSE] = "response",
        [GW_OUTCOME_CONNECT_REFUSED] = "connect_refused",
        [GW_OUTCOME_CONNECT_TIMEOUT] = "connect_timeout",
        [GW_OUTCOME_RESET] = "reset",
        [GW_OUTCOME_TIMEOUT] = "timeout",
        [GW_OUTCOME_CANCELLED] = "cancelled",
    };
    return (unsigned)kind < GW_OUTCOME_KIND_COUNT ? names[kind] : NULL;
}
