#!/usr/bin/env python3
"""Small-I/O workloads for scripts/bench-fs.sh; prints the elapsed seconds.

  bench-io.py randwrite FILE FILE_MB OPS SEED   # OPS x (4 KiB pwrite at a random
                                                # 4 KiB-aligned offset + fsync)
  bench-io.py create DIR N                      # N new 4 KiB files (open, write, close)

FILE must already exist with FILE_MB MiB (it is rewritten in place, not
extended). The time excludes interpreter start-up and the setup.
"""
import os
import random
import sys
import time


def randwrite(path, file_mb, ops, seed):
    rnd = random.Random(seed)
    blocks = file_mb * 256
    buf = bytes(rnd.getrandbits(8) for _ in range(4096))
    fd = os.open(path, os.O_WRONLY)
    try:
        t0 = time.perf_counter()
        for _ in range(ops):
            os.pwrite(fd, buf, rnd.randrange(blocks) * 4096)
            os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def create(path, n):
    buf = b"c" * 4096
    t0 = time.perf_counter()
    for i in range(n):
        fd = os.open(os.path.join(path, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, buf)
        os.close(fd)
    return time.perf_counter() - t0


def main():
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "randwrite":
        secs = randwrite(a[1], int(a[2]), int(a[3]), int(a[4]))
    elif len(a) == 3 and a[0] == "create":
        secs = create(a[1], int(a[2]))
    else:
        sys.stderr.write(__doc__)
        return 2
    print("%.6f" % secs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
