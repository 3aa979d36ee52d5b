/*
 * supervisor.h - the parent process: owns the sockets and shared memory, runs the children.
 *
 * Process model (docs/architecture.md has the diagram):
 *
 *   supervisor (no event loop, no request code, no SQLite)
 *     |-- control   admin API, SQLite; later: breaker owners, health prober, alert engine
 *     |-- worker 0  h2o front end + upstream client on its own libuv loop
 *     |-- ...
 *     `-- worker N-1
 *
 * The supervisor binds every listening socket before forking, so the kernel keeps queueing
 * connections while a worker is replaced, and maps the shared stats region that all children
 * see. It replaces any child that exits unexpectedly. Children get SIGTERM when the supervisor
 * dies (PR_SET_PDEATHSIG), so no orphan keeps serving.
 */
#ifndef GW_SUPERVISOR_H
#define GW_SUPERVISOR_H

#include "config.h"

/* Runs until SIGTERM/SIGINT. Returns the process exit status: 0 after a graceful stop, 1 when
 * start-up failed (the reason is logged). Takes ownership of cfg (a reload replaces it).
 * `config_path` is the file reloads read again, NULL for the embedded default. */
int gw_supervisor_run(gw_config_t *cfg, const char *config_path);

#endif
