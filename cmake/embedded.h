/* embedded.h - files compiled into the binary by cmake/embed.cmake (migrations, default config). */
#ifndef BW_EMBEDDED_H
#define BW_EMBEDDED_H

#include <stddef.h>

typedef struct bw_embedded_file {
    const char *name; /* base name, e.g. "0001_events.sql" */
    const char *data; /* NUL-terminated */
    size_t len;       /* without the NUL */
} bw_embedded_file_t;

#endif
