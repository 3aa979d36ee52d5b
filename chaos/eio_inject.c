/*
 * eio_inject.c - libbw_eio.so, an LD_PRELOAD library that makes file I/O on chosen files fail
 * with EIO (or another errno) while a control file exists. Used by chaos/scenarios/db_eio.py to
 * break the SQLite database under a running gateway without touching anything else.
 *
 * Why LD_PRELOAD: Breakwater links the system libsqlite3.so.0 dynamically, and SQLite's unix VFS
 * calls libc through its aSyscall[] table, whose entries are the addresses of pwrite64, pread64,
 * fdatasync, write, ... taken inside libsqlite3.so, i.e. resolved through its GOT like any other
 * import (`nm -D --undefined-only libsqlite3.so.0` lists them). A preloaded library that defines
 * the same symbols comes first in the lookup order, so SQLite's calls reach the functions below;
 * they decide, and either fail the call or pass it on to the next definition, found with
 * dlsym(RTLD_NEXT) (libc's, or AddressSanitizer's interceptor when libasan is preloaded first, see
 * below). No kernel support (dm-flakey, fault injection debugfs) and no root are needed, and the
 * process under test is the real binary.
 *
 * Environment (read once, in the constructor; inherited by every process the gateway forks):
 *   BW_EIO_FLAG   path of the control file. Absent: every call passes through. Present: its
 *                 content (whitespace-separated words) selects what fails:
 *                   write    pwrite64, pwrite, write           (SQLite: WAL and journal writes,
 *                                                             checkpoints into the db file)
 *                   fsync    fdatasync, fsync                  (the commit's sync of the WAL)
 *                   read     pread64, pread                    (page reads of db and WAL)
 *                   all      write + fsync + read
 *                 optionally followed by an errno name or number (EIO, ENOSPC, EDQUOT, EROFS,
 *                 EPERM, EAGAIN, or decimal); default EIO. An empty file means "write EIO".
 *                 The file is re-read when its inode, size or mtime changes: replace it with
 *                 rename() so a reader never sees half of a new content.
 *                 BW_EIO_FLAG unset: the library does nothing at all.
 *   BW_EIO_MATCH  substring of the file's path (as /proc/self/fd/N shows it) that selects the
 *                 files to fail; default "breakwater.db", which covers breakwater.db,
 *                 breakwater.db-wal and breakwater.db-journal. Use the full path
 *                 STATE_DIR/breakwater.db to leave other databases alone.
 *   BW_EIO_POLL_MS how often the control file is looked at (default 2 ms): a change takes effect
 *                 within that time.
 *   BW_EIO_STATS  optional path prefix: every process that injected a failure keeps
 *                 PREFIX.PID up to date with one line
 *                   pid=P injected=N write=W fsync=F read=R last_errno=E
 *                 so a test can prove that the faults really happened in the process it meant.
 *
 * What SQLite 3.40 makes of it (WAL, exclusive locking, synchronous=FULL; measured): write ->
 * the COMMIT fails with SQLITE_IOERR_WRITE (778); fsync -> SQLITE_IOERR_FSYNC (1034), the frames
 * stay in the -wal file beyond the committed end (a crash before the next commit replays them:
 * the "failed" transaction reappears after a restart); read -> SQLITE_CORRUPT (11, "database disk
 * image is malformed": unixRead maps EIO to SQLITE_IOERR_CORRUPTFS), with only a cold page cache.
 * In every mode the transaction is rolled back and the same connection works again once the
 * file is removed.
 *
 * Cost: with the control file absent, an intercepted call costs one clock_gettime (vDSO) and,
 * at most every BW_EIO_POLL_MS, one stat(). While it is present, each intercepted call of a
 * selected kind also costs one readlink(/proc/self/fd/N), so sockets and unrelated files in
 * every process (workers write their sockets with write()) pass through after that check. No
 * per-fd cache is kept: a cached decision would go stale when a descriptor number is closed and
 * reused for another file, and the readlink is cheap next to the I/O it guards.
 *
 * Not intercepted: read() (SQLite reads pages with pread64; read() is used for /dev/urandom and
 * by this library itself), writev/pwritev (SQLite does not use them), ftruncate, open (a failing
 * open is SQLITE_CANTOPEN, a different scenario), mmap (Breakwater sets mmap_size=0 and keeps
 * no -shm). Threads: the state is a few atomics; a racing double stat() is harmless.
 *
 * AddressSanitizer builds: ASan insists on being first in the library list, so preload it
 * first: LD_PRELOAD="/path/libasan.so.8 /path/libbw_eio.so". ASan's interceptors then call on
 * into these functions, which call on into libc. This file is built without the sanitizers (it
 * is not part of the program under test).
 *
 * Build: cmake target bw_eio (chaos/CMakeLists.txt) -> BUILD/libbw_eio.so, or
 *   gcc -std=gnu11 -O2 -fPIC -shared chaos/eio_inject.c -o libbw_eio.so -ldl
 * Try it (python's sqlite3 module uses the same libsqlite3.so.0):
 *   mkdir /tmp/x; echo write > /tmp/x/flag
 *   BW_EIO_FLAG=/tmp/x/flag LD_PRELOAD=$PWD/libbw_eio.so python3 -c \
 *     'import sqlite3; sqlite3.connect("/tmp/x/breakwater.db").execute("create table t(a)")'
 *   -> sqlite3.OperationalError: disk I/O error
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT, off64_t, pwrite64 */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EIO_WRITE 1u
#define EIO_FSYNC 2u
#define EIO_READ 4u
#define EIO_ALL (EIO_WRITE | EIO_FSYNC | EIO_READ)
#define MATCH_DEFAULT "breakwater.db"
#define POLL_MS_DEFAULT 2
#define PATH_MAX_ 4096

/* The next definitions of the interposed functions (libc's, or ASan's interceptors), whose
 * prototypes unistd.h declares for the exported interposers at the end of this file. */
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);
typedef ssize_t (*pread64_fn)(int, void *, size_t, off64_t);
typedef int (*sync_fn)(int);

static struct {
    pwrite_fn pwrite;
    pwrite64_fn pwrite64;
    write_fn write;
    pread_fn pread;
    pread64_fn pread64;
    sync_fn fsync, fdatasync;
} real;

static struct {
    bool enabled; /* BW_EIO_FLAG set */
    char flag[PATH_MAX_];
    char match[PATH_MAX_];
    char stats[PATH_MAX_];
    uint64_t poll_ns;
} cfg;

/* The state of the control file as of the last poll: mode bits | errno << 8 (0: inactive). */
static _Atomic uint32_t state;
static _Atomic uint64_t next_poll_ns;
/* What was read from the file last time, so it is re-read only when it changed. */
static _Atomic uint64_t flag_stamp;

static _Atomic uint64_t n_write, n_fsync, n_read;
static _Atomic int last_errno;
static _Atomic int stats_fd = -1;
static _Atomic pid_t stats_pid;

static void *next_sym(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

/* Resolves every next definition; also called from the interposers in case one of them runs
 * before this library's constructor (another library's constructor doing I/O). */
static void resolve(void)
{
    real.pwrite = (pwrite_fn)next_sym("pwrite");
    real.pwrite64 = (pwrite64_fn)next_sym("pwrite64");
    real.write = (write_fn)next_sym("write");
    real.pread = (pread_fn)next_sym("pread");
    real.pread64 = (pread64_fn)next_sym("pread64");
    real.fsync = (sync_fn)next_sym("fsync");
    real.fdatasync = (sync_fn)next_sym("fdatasync");
}

static void copy_env(char *dst, size_t n, const char *name, const char *dflt)
{
    const char *v = getenv(name);

    snprintf(dst, n, "%s", v != NULL && v[0] != '\0' ? v : dflt != NULL ? dflt : "");
}

__attribute__((constructor)) static void eio_init(void)
{
    const char *poll = getenv("BW_EIO_POLL_MS");
    long ms = poll != NULL ? strtol(poll, NULL, 10) : POLL_MS_DEFAULT;

    resolve();
    copy_env(cfg.flag, sizeof(cfg.flag), "BW_EIO_FLAG", NULL);
    copy_env(cfg.match, sizeof(cfg.match), "BW_EIO_MATCH", MATCH_DEFAULT);
    copy_env(cfg.stats, sizeof(cfg.stats), "BW_EIO_STATS", NULL);
    cfg.poll_ns = (uint64_t)(ms < 0 ? 0 : ms) * 1000000u;
    cfg.enabled = cfg.flag[0] != '\0';
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int parse_errno(const char *w)
{
    static const struct {
        const char *name;
        int value;
    } names[] = {{"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},
                 {"EROFS", EROFS},   {"EPERM", EPERM},   {"EAGAIN", EAGAIN},
                 {"EACCES", EACCES}, {"EBADF", EBADF},   {"EINTR", EINTR}};
    char *end;
    long v;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(w, names[i].name) == 0)
            return names[i].value;
    v = strtol(w, &end, 10);
    return *end == '\0' && v > 0 && v < 256 ? (int)v : 0;
}

/* Parses the control file's content into mode bits | errno << 8. */
static uint32_t parse_flag(char *text)
{
    uint32_t mode = 0;
    int err = 0;

    for (char *save = NULL, *w = strtok_r(text, " \t\r\n,", &save); w != NULL;
         w = strtok_r(NULL, " \t\r\n,", &save)) {
        if (strcmp(w, "write") == 0)
            mode |= EIO_WRITE;
        else if (strcmp(w, "fsync") == 0)
            mode |= EIO_FSYNC;
        else if (strcmp(w, "read") == 0)
            mode |= EIO_READ;
        else if (strcmp(w, "all") == 0)
            mode |= EIO_ALL;
        else if (parse_errno(w) != 0)
            err = parse_errno(w);
    }
    if (mode == 0)
        mode = EIO_WRITE;
    return mode | (uint32_t)(err != 0 ? err : EIO) << 8;
}

/* Reads the control file (read() and open() are not intercepted here). */
static uint32_t read_flag(void)
{
    char buf[256];
    ssize_t n;
    int fd = open(cfg.flag, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return parse_flag(buf);
}

/* The current state, looking at the control file at most every poll_ns. */
static uint32_t current_state(void)
{
    uint64_t now, due;
    struct stat st;

    if (!cfg.enabled)
        return 0;
    now = mono_ns();
    due = atomic_load_explicit(&next_poll_ns, memory_order_relaxed);
    if (now < due)
        return atomic_load_explicit(&state, memory_order_relaxed);
    atomic_store_explicit(&next_poll_ns, now + cfg.poll_ns, memory_order_relaxed);
    if (stat(cfg.flag, &st) != 0) {
        atomic_store(&flag_stamp, 0);
        atomic_store(&state, 0);
        return 0;
    }
    /* inode, size and mtime identify a version of the file: re-read only when one changed */
    uint64_t stamp = ((uint64_t)st.st_ino * 1000003u) ^ ((uint64_t)st.st_size << 48) ^
                     ((uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec) ^
                     1u;
    if (stamp != atomic_load(&flag_stamp)) {
        atomic_store(&state, read_flag());
        atomic_store(&flag_stamp, stamp);
    }
    return atomic_load(&state);
}

/* Whether fd is one of the selected files: its /proc/self/fd link contains cfg.match. */
static bool fd_matches(int fd)
{
    char proc[64], path[PATH_MAX_];
    ssize_t n;

    if (fd < 0)
        return false;
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    n = readlink(proc, path, sizeof(path) - 1);
    if (n <= 0)
        return false;
    path[n] = '\0';
    return strstr(path, cfg.match) != NULL;
}

static void write_stats(void)
{
    char line[200];
    pid_t pid = getpid();
    int fd = atomic_load(&stats_fd), len;

    if (cfg.stats[0] == '\0' || real.pwrite == NULL)
        return;
    if (fd < 0 || atomic_load(&stats_pid) != pid) { /* first time, or a forked child */
        char path[PATH_MAX_ + 16];
        snprintf(path, sizeof(path), "%s.%d", cfg.stats, (int)pid);
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return;
        atomic_store(&stats_fd, fd);
        atomic_store(&stats_pid, pid);
    }
    /* fixed width, so rewriting at offset 0 never leaves a longer old line's tail behind */
    len = snprintf(
        line, sizeof(line),
        "pid=%-10d injected=%-12llu write=%-12llu fsync=%-12llu read=%-12llu "
        "last_errno=%-4d\n",
        (int)pid,
        (unsigned long long)(atomic_load(&n_write) + atomic_load(&n_fsync) + atomic_load(&n_read)),
        (unsigned long long)atomic_load(&n_write), (unsigned long long)atomic_load(&n_fsync),
        (unsigned long long)atomic_load(&n_read), atomic_load(&last_errno));
    if (len > 0)
        (void)real.pwrite(fd, line, (size_t)len, 0);
}

/* Whether a call of this kind on fd fails now; sets errno when it does. */
static bool inject(int fd, uint32_t kind)
{
    uint32_t s = current_state();
    int err;

    if ((s & kind) == 0 || !fd_matches(fd))
        return false;
    err = (int)(s >> 8);
    atomic_fetch_add(kind == EIO_WRITE ? &n_write : kind == EIO_FSYNC ? &n_fsync : &n_read, 1);
    atomic_store(&last_errno, err);
    write_stats();
    errno = err;
    return true;
}

#define NEED(fn)                                                                                   \
    do {                                                                                           \
        if (real.fn == NULL)                                                                       \
            resolve();                                                                             \
        if (real.fn == NULL) {                                                                     \
            errno = ENOSYS;                                                                        \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    NEED(pwrite64);
    return inject(fd, EIO_WRITE) ? -1 : real.pwrite64(fd, buf, n, off);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    NEED(pwrite);
    return inject(fd, EIO_WRITE) ? -1 : real.pwrite(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    NEED(write);
    return inject(fd, EIO_WRITE) ? -1 : real.write(fd, buf, n);
}

ssize_t pread64(int fd, void *buf, size_t n, off64_t off)
{
    NEED(pread64);
    return inject(fd, EIO_READ) ? -1 : real.pread64(fd, buf, n, off);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    NEED(pread);
    return inject(fd, EIO_READ) ? -1 : real.pread(fd, buf, n, off);
}

int fdatasync(int fd)
{
    NEED(fdatasync);
    return inject(fd, EIO_FSYNC) ? -1 : real.fdatasync(fd);
}

int fsync(int fd)
{
    NEED(fsync);
    return inject(fd, EIO_FSYNC) ? -1 : real.fsync(fd);
}
