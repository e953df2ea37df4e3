/* LD_PRELOAD shim for tests: the host fails one sync or one read.
 * With FAILSYNC_CTL=FILE in the environment, FILE holds "OP SUFFIX" (OP:
 * sync or read). Once FILE is there, the first fsync/fdatasync (sync) or
 * read/pread (read) of a descriptor whose path ends with SUFFIX (e.g.
 * "-wal") fails with EIO, and FILE is renamed FILE.fired: it fires once,
 * whichever thread gets there first. Everything else passes.
 * Build: gcc -shared -fPIC -o failsync.so failsync.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int should_fail (const char *op, int fd) {
  const char *ctl = getenv("FAILSYNC_CTL");
  if (!ctl || access(ctl, F_OK) != 0) return 0;
  char want[16] = "", suffix[256] = "", link[64], path[4096], fired[4200];
  FILE *f = fopen(ctl, "re");
  if (!f) return 0;
  int got = fscanf(f, "%15s %255s", want, suffix);
  fclose(f);
  if (got != 2 || strcmp(want, op) != 0) return 0;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = 0;
  size_t ls = strlen(suffix);
  if ((size_t)n < ls || strcmp(path + n - ls, suffix) != 0) return 0;
  snprintf(fired, sizeof fired, "%s.fired", ctl);
  return rename(ctl, fired) == 0; /* atomic: one caller wins */
}

#define REAL(type, name, args) static type (*real) args; if (!real) real = (type (*) args)dlsym(RTLD_NEXT, name)

int fdatasync (int fd) {
  REAL(int, "fdatasync", (int));
  if (should_fail("sync", fd)) { errno = EIO; return -1; }
  return real(fd);
}

int fsync (int fd) {
  REAL(int, "fsync", (int));
  if (should_fail("sync", fd)) { errno = EIO; return -1; }
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
