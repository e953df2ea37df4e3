/* LD_PRELOAD shim for tests: the host fails one sync or one read.
 * With FAILSYNC_CTL=FILE in the environment, FILE holds "OP SUFFIX". Once
 * FILE is there, the first matching call of a descriptor whose path ends
 * with SUFFIX (e.g. "-wal") fails with EIO, and FILE is renamed
 * FILE.fired: it fires once, whichever thread gets there first, after
 * MS milliseconds if given (a failure that takes its time). OP:
 *   sync     fsync/fdatasync
 *   sync-rw  fsync/fdatasync of a descriptor open for writing (SQLite's
 *            own, not the read-only ones the daemon syncs the WAL through)
 *   read     read/pread
 * A failed sync is reported as Linux reports a failed writeback (errseq):
 * once to each file description open on the file then, at its next sync;
 * not to one opened after it (the failure was seen). Everything else
 * passes.
 * Build: gcc -shared -fPIC -o failsync.so failsync.c -ldl */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 4096
/* descriptors whose next sync reports a failure met by another's (errseq) */
static volatile char pending[MAX_FDS];

/* the MS of the last FILE read */
static int delay_ms;

static int should_fail (const char *op, int fd) {
  const char *ctl = getenv("FAILSYNC_CTL");
  if (!ctl || access(ctl, F_OK) != 0) return 0;
  char want[16] = "", suffix[256] = "", link[64], path[4096], fired[4200];
  FILE *f = fopen(ctl, "re");
  if (!f) return 0;
  int ms = 0;
  int got = fscanf(f, "%15s %255s %d", want, suffix, &ms);
  fclose(f);
  if (got < 2) return 0;
  if (strcmp(want, "sync-rw") == 0) {
    if (strcmp(op, "sync") != 0 || (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY) return 0;
  } else if (strcmp(want, op) != 0) return 0;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = 0;
  size_t ls = strlen(suffix);
  if ((size_t)n < ls || strcmp(path + n - ls, suffix) != 0) return 0;
  snprintf(fired, sizeof fired, "%s.fired", ctl);
  if (rename(ctl, fired) != 0) return 0; /* atomic: one caller wins */
  delay_ms = ms;
  return 1;
}

/* the failure is the file's: every other description open on it hears of it once */
static void spread (int fd) {
  struct stat me, other;
  if (fstat(fd, &me) != 0) return;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  int self = dirfd(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int o = atoi(e->d_name);
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || o == fd || o == self || o >= MAX_FDS) continue;
    if (fstat(o, &other) == 0 && other.st_dev == me.st_dev && other.st_ino == me.st_ino) pending[o] = 1;
  }
  closedir(d);
}

static int sync_fails (int fd) {
  if (fd >= 0 && fd < MAX_FDS && __atomic_exchange_n(&pending[fd], 0, __ATOMIC_SEQ_CST)) return 1;
  if (!should_fail("sync", fd)) return 0;
  if (delay_ms > 0) usleep(delay_ms * 1000);
  spread(fd);
  return 1;
}

#define REAL(type, name, args) static type (*real) args; if (!real) real = (type (*) args)dlsym(RTLD_NEXT, name)

int fdatasync (int fd) {
  REAL(int, "fdatasync", (int));
  if (sync_fails(fd)) { errno = EIO; return -1; }
  return real(fd);
}

int fsync (int fd) {
  REAL(int, "fsync", (int));
  if (sync_fails(fd)) { errno = EIO; return -1; }
  return real(fd);
}

int close (int fd) {
  REAL(int, "close", (int));
  if (fd >= 0 && fd < MAX_FDS) pending[fd] = 0;
  return real(fd);
}

ssize_t read (int fd, void *buf, size_t len) {
  REAL(ssize_t, "read", (int, void *, size_t));
  if (should_fail("read", fd)) { errno = EIO; return -1; }
  return real(fd, buf, len);
}

ssize_t pread (int fd, void *buf, size_t len, off_t off) {
  REAL(ssize_t, "pread", (int, void *, size_t, off_t));
  if (should_fail("read", fd)) { errno = EIO; return -1; }
  return real(fd, buf, len, off);
}

ssize_t pread64 (int fd, void *buf, size_t len, off_t off) {
  REAL(ssize_t, "pread64", (int, void *, size_t, off_t));
  if (should_fail("read", fd)) { errno = EIO; return -1; }
  return real(fd, buf, len, off);
}
