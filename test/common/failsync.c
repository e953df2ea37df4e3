/* LD_PRELOAD shim for tests: the host fails one sync.
 * With FAILSYNC_CTL=FILE in the environment, the first fsync/fdatasync of a
 * descriptor whose path ends with the suffix written in FILE (e.g. "-wal")
 * after FILE appears fails with EIO, and FILE is renamed FILE.fired (so it
 * fires once, whichever thread gets there first). Everything else passes.
 * Build: gcc -shared -fPIC -o failsync.so failsync.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int should_fail (int fd) {
  const char *ctl = getenv("FAILSYNC_CTL");
  if (!ctl || access(ctl, F_OK) != 0) return 0;
  char suffix[256] = "", link[64], path[4096], fired[4200];
  FILE *f = fopen(ctl, "re");
  if (!f) return 0;
  int got = fscanf(f, "%255s", suffix);
  fclose(f);
  if (got != 1) return 0;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = 0;
  size_t ls = strlen(suffix);
  if ((size_t)n < ls || strcmp(path + n - ls, suffix) != 0) return 0;
  snprintf(fired, sizeof fired, "%s.fired", ctl);
  return rename(ctl, fired) == 0; /* atomic: one caller wins */
}

int fdatasync (int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  if (should_fail(fd)) { errno = EIO; return -1; }
  return real(fd);
}

int fsync (int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  if (should_fail(fd)) { errno = EIO; return -1; }
  return real(fd);
}
