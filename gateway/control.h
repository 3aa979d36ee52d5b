/*
 * control.h - the control process: the admin API and the SQLite owner.
 *
 * One control process runs beside the workers, supervised like them. It owns the database (one
 * writer, EXCLUSIVE locking: see alerts/db.h) and serves the admin listener. It is where the
 * breaker owners, the health prober and the alert engine will run: work that must happen once,
 * not once per worker, and that may touch the disk - never on a worker's request path.
 */
#ifndef GW_CONTROL_H
#define GW_CONTROL_H

#include "runtime.h"

/* Runs the control loop until SIGTERM. Returns the exit status. */
int gw_control_main(const gw_runtime_t *rt, int admin_fd);

#endif
