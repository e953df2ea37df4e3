#!/usr/bin/env python3
"""Metadata workloads for scripts/bench-meta.sh; print their rates as JSON.

  bench-meta.py tree DIR N NDIRS   # N empty files in NDIRS directories:
                                   # create, stat, ls -l, rename, unlink (ops/s)
  bench-meta.py mixed DIR OPS SEED # an fsstress-like mix of OPS metadata and
                                   # small-data operations, one process (seconds)
  bench-meta.py rmdata DIR N       # unlink of N files of 4 KiB in 100 directories,
                                   # written back first (files/s)

Between the phases of `tree` the script sleeps 1.1 s, so a FUSE mount's
cached names and attributes (1 s) have expired: stat and ls -l ask the
filesystem, not the kernel's caches (a local filesystem keeps its dcache).
"""
import json
import os
import random
import subprocess
import sys
import time


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def spread(top, n, ndirs):
    """n file names spread over ndirs directories of top (made here; top itself when ndirs is 1)"""
    dirs = [os.path.join(top, "d%03d" % k) if ndirs > 1 else top for k in range(ndirs)]
    for x in dirs:
        os.makedirs(x, exist_ok=True)
    return dirs, [os.path.join(dirs[i % ndirs], "f%06d" % i) for i in range(n)]


def tree(top, n, ndirs):
    dirs, names = spread(top, n, ndirs)

    def create():
        for p in names:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    def stat():
        for p in names:
            os.stat(p)

    def lsl():
        subprocess.run(["ls", "-l"] + dirs, check=True, stdout=subprocess.DEVNULL)

    def rename():
        for p in names:
            os.rename(p, p + "r")

    def unlink():
        for p in names:
            os.unlink(p + "r")

    out = {}
    for phase, fn in (("create", create), ("stat", stat), ("lsl", lsl), ("rename", rename), ("unlink", unlink)):
        time.sleep(1.1)
        out[phase] = round(n / timed(fn), 1)
    return out


def rmdata(top, n):
    """unlink of files with data: their blocks are freed too (the tree
    phases' files are empty). Written, then left 6 s for the writeback
    (foliofs: dirty data older than 5 s), then unlinked."""
    _, names = spread(top, n, 100)
    block = b"d" * 4096
    for p in names:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, block)
        os.close(fd)
    time.sleep(6)

    def unlink():
        for p in names:
            os.unlink(p)

    return {"rmdata": round(n / timed(unlink), 1)}


def mixed(top, ops, seed):
    """create/write/mkdir/rename/unlink/link/symlink/stat/readdir/truncate/chmod/setxattr/rmdir"""
    r = random.Random(seed)
    files, dirs = [], [top]
    serial = [0]

    def fresh(parent):
        serial[0] += 1
        return os.path.join(parent, "n%d" % serial[0])

    def step():
        k = r.random()
        if k < 0.20 or not files:
            p = fresh(r.choice(dirs))
            with open(p, "wb") as f:
                f.write(b"m" * r.randrange(0, 16384))
            files.append(p)
        elif k < 0.30:
            p = r.choice(files)
            with open(p, "ab") as f:
                f.write(b"a" * r.randrange(1, 8192))
        elif k < 0.36:
            p = fresh(r.choice(dirs))
            os.mkdir(p)
            dirs.append(p)
        elif k < 0.46:
            i = r.randrange(len(files))
            q = fresh(r.choice(dirs))
            os.rename(files[i], q)
            files[i] = q
        elif k < 0.56:
            os.unlink(files.pop(r.randrange(len(files))))
        elif k < 0.61:
            q = fresh(r.choice(dirs))
            os.link(r.choice(files), q)
            files.append(q)
        elif k < 0.64:
            q = fresh(r.choice(dirs))
            os.symlink("target", q)
            files.append(q)
        elif k < 0.80:
            os.lstat(r.choice(files))
        elif k < 0.86:
            os.listdir(r.choice(dirs))
        elif k < 0.90:
            p = r.choice(files)
            if not os.path.islink(p):
                os.truncate(p, r.randrange(0, 8192))
        elif k < 0.94:
            p = r.choice(files)
            if not os.path.islink(p):
                os.chmod(p, r.choice((0o600, 0o644, 0o755)))
        elif k < 0.97:
            p = r.choice(files)
            if not os.path.islink(p):
                os.setxattr(p, "user.k", b"v" * r.randrange(1, 64))
        else:
            for x in reversed(dirs[1:]):
                if not os.listdir(x):
                    os.rmdir(x)
                    dirs.remove(x)
                    break

    def run():
        for _ in range(ops):
            step()

    return {"mixed": round(timed(run), 3)}


def main():
    a = sys.argv[1:]
    if len(a) == 4 and a[0] == "tree":
        res = tree(a[1], int(a[2]), int(a[3]))
    elif len(a) == 3 and a[0] == "rmdata":
        res = rmdata(a[1], int(a[2]))
    elif len(a) == 4 and a[0] == "mixed":
        res = mixed(a[1], int(a[2]), int(a[3]))
    else:
        sys.stderr.write(__doc__)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
