#!/usr/bin/env python3
"""The operations test/fsx.ts cannot do from Node: mmap reads and writes and
fallocate(PUNCH_HOLE). Started once by fsx: fsx-helper.py FILE REQ_FIFO RESP_FIFO.
Says "hello" on RESP, then serves until REQ reaches EOF: each request is one
line, a JSON list of ops; each answer one line, a JSON list of results (same
order):
  {"op": "mapread", "off": O, "len": L}          -> {"data": base64}
  {"op": "mapwrite", "off": O, "len": L, "data": base64}
        (extends the file with ftruncate first if needed, like fsx) -> {}
  {"op": "punch", "off": O, "len": L}            -> {} or {"errno": "EOPNOTSUPP"}
Any other failure: {"errno": NAME, "msg": ...} and the batch stops there.
"""
import base64
import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import sys

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

_libc = None


def fallocate(fd, mode, off, length):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def mapped(fd, off, length, write):
    start = off - off % mmap.ALLOCATIONGRANULARITY
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
    return mmap.mmap(fd, off + length - start, mmap.MAP_SHARED, prot, offset=start), off - start


def run(fd, op):
    kind, off, length = op["op"], op["off"], op["len"]
    if kind == "mapread":
        m, rel = mapped(fd, off, length, False)
        try:
            return {"data": base64.b64encode(m[rel:rel + length]).decode()}
        finally:
            m.close()
    if kind == "mapwrite":
        data = base64.b64decode(op["data"])
        if os.fstat(fd).st_size < off + length:
            os.ftruncate(fd, off + length)
        m, rel = mapped(fd, off, length, True)
        try:
            m[rel:rel + length] = data
            m.flush()  # msync(MS_SYNC)
        finally:
            m.close()
        return {}
    if kind == "punch":
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length)
        return {}
    raise ValueError("unknown op " + kind)


def batch(path, ops):
    out = []
    fd = os.open(path, os.O_RDWR)
    try:
        for op in ops:
            try:
                out.append(run(fd, op))
            except OSError as e:
                out.append({"errno": errno.errorcode.get(e.errno, str(e.errno)), "msg": str(e)})
                break
    finally:
        os.close(fd)
    return out


def main():
    path, req_path, resp_path = sys.argv[1:4]
    with open(req_path, "rb") as req, open(resp_path, "wb", buffering=0) as resp:
        resp.write(b"hello\n")
        for line in req:
            resp.write(json.dumps(batch(path, json.loads(line))).encode() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
