#!/usr/bin/env bash
# FIEMAP benchmark (npm run bench): filefrag -v through the LD_PRELOAD shim
# on a file of 100k extents (written back), on a file of 100k separate dirty
# 4 KiB runs (not written back: 100k delalloc extents, one hole scan each)
# and on a fully dirty 1 GiB file (the delalloc path: the page cache scan),
# beside filefrag on the host directory for the same 100k-extent layout.
# Medians of 3. Needs root and /dev/fuse; prints numbers, asserts nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then echo "bench-fiemap: skipped (needs root and /dev/fuse)"; exit 0; fi
N=${BENCH_FIEMAP_EXTENTS:-100000}
d=$(mktemp -d /tmp/foliofs-bench-fiemap.XXXXXX)
export FOLIOFS_RUNDIR=$d/run
cleanup() { "$root/bin/foliofs" umount "$d/mnt" >/dev/null 2>&1 || true; rm -rf "$d"; }
trap cleanup EXIT
mkdir -p "$d/mnt" "$d/host"
frag() { # FILE N [nosync]: a 4 KiB block, then a hole, N times; fsynced unless nosync
	python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
blk = b"y" * 4096
for k in range(int(sys.argv[2])):
    os.pwrite(fd, blk, k * 8192)
if sys.argv[3] != "nosync":
    os.fsync(fd)
os.close(fd)' "$1" "$2" "${3:-sync}"; }
median3() { # median wall time in seconds of three runs of "$@"
	for _ in 1 2 3; do
		s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
		echo "$e - $s" | bc -l
	done | sort -n | sed -n 2p
}
"$root/bin/foliofs" mkfs --size 8G "$d/img" >/dev/null
"$root/bin/foliofs" mount "$d/img" "$d/mnt" -o cache_size=4G,dirty_expire=3600
frag "$d/mnt/frag" "$N"
frag "$d/host/frag" "$N"
# filefrag's "N extents found" counts physically contiguous runs; count the listed extents
n_f=$(LD_PRELOAD="$root/native/build/libfoliofs-preload.so" filefrag -v "$d/mnt/frag" | grep -c '^ *[0-9]*: ')
n_h=$(filefrag -v "$d/host/frag" | grep -c '^ *[0-9]*: ')
shim=$root/native/build/libfoliofs-preload.so
t_f=$(median3 env LD_PRELOAD="$shim" filefrag -v "$d/mnt/frag")
t_w=$(median3 "$root/bin/foliofs" preload filefrag -v "$d/mnt/frag")
t_x=$(median3 env LD_PRELOAD="$shim" xfs_io -c fiemap "$d/mnt/frag")
t_h=$(median3 filefrag -v "$d/host/frag")
# N dirty runs in one file (N * 4 KiB dirty: below the 1 GiB background limit of cache_size=4G); removed before the next part
frag "$d/mnt/runs" "$N" nosync
n_r=$(LD_PRELOAD="$shim" filefrag -v "$d/mnt/runs" | grep -c 'delalloc')
t_r=$(median3 env LD_PRELOAD="$shim" filefrag -v "$d/mnt/runs")
rm "$d/mnt/runs"
dd if=/dev/zero bs=1M count=1024 status=none | tr '\0' 'd' > "$d/mnt/dirty"
t_d=$(median3 env LD_PRELOAD="$shim" filefrag -v "$d/mnt/dirty")
dirty=$("$root/bin/foliofs" stats --json "$d/mnt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pagecache"]["dirtyBytes"] >> 20)')
echo "foliofs bench (fiemap): filefrag -v with the shim (LD_PRELOAD), medians of 3"
printf '%-58s %8.3f s   (host filefrag -v, same layout: %.3f s, %s extents; ratio %.2f)\n' "$N-extent file, foliofs ($n_f extents listed)" "$t_f" "$t_h" "$n_h" "$(echo "$t_f / $t_h" | bc -l)"
printf '%-58s %8.3f s   (+ node start-up of the wrapper)\n' "the same through foliofs preload" "$t_w"
printf '%-58s %8.3f s\n' "$N-extent file, xfs_io -c fiemap with the shim" "$t_x"
printf '%-58s %8.3f s   (%s delalloc extents listed)\n' "$N separate dirty 4 KiB runs (hole scans)" "$t_r" "$n_r"
printf '%-52s %8.3f s   (%s MiB dirty while measured)\n' "fully dirty 1 GiB file (delalloc path)" "$t_d" "$dirty"
