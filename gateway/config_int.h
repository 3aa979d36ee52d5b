/*
 * config_int.h - internals shared by the config loader (config.c) and its value parsers
 * (config_values.c). Not for use outside gateway/config*.c and their unit tests.
 *
 * The split: config_values.c holds pure functions of a string (plus getenv), so its tests need no
 * YAML; config.c walks the YAML tree and calls them. Everything here is stateless and
 * all-or-nothing: an output is written only on success.
 */
#ifndef GW_CONFIG_INT_H
#define GW_CONFIG_INT_H

#include "config.h"

#include <sys/types.h>

/* Longest environment variable name accepted in ${NAME}. */
#define GW_CFG_VAR_MAX 255

/* Expands ${NAME}, ${NAME:-default} and $$ in in[0..len). A '$' followed by anything else is kept
 * as is. ${NAME:-default} takes the default when NAME is unset or empty; the default is literal
 * text up to the first '}'. Writes at most cap bytes to out (NUL-terminated when cap > 0; out may
 * be NULL with cap 0 to measure) and returns the full expanded length without the NUL. On an
 * unset variable, a bad name or an unterminated "${", returns -1 and writes a message to err. */
ssize_t gw_cfg_expand_env(const char *in, size_t len, char *out, size_t cap, char *err,
                          size_t errcap);

/* Decimal digits only (no sign, no spaces), at least one; -1 on junk or uint64 overflow. */
int gw_cfg_parse_uint(const char *s, uint64_t *out);

/* A percentage without or with the sign: "5", "12.5", "12.5%", 0..100 with up to 4 decimals,
 * as parts per million. */
int gw_cfg_parse_percent(const char *s, uint32_t *out);

/* True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. host is numeric (as gw_parse_addr wrote). */
bool gw_cfg_addr_is_loopback(int family, const char *host);

/* Sorts "FILE:LINE:COL: msg" items by line, then column, keeping the order of equal positions.
 * file_len is strlen(FILE), so a file name holding ':' does not confuse the sort. */
void gw_cfg_diag_sort(gw_diag_t *d, size_t file_len);

/* Moves every item of src to the end of dst (dst may be NULL: the items are freed). Leaves src
 * empty. */
void gw_cfg_diag_move(gw_diag_t *dst, gw_diag_t *src);

#endif
