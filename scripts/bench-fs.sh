#!/usr/bin/env bash
# Throughput through a real foliofs mount, next to the same work on the
# directory that holds the image (the baseline), measured in the same run.
# Needs root and /dev/fuse; prints numbers, asserts nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then echo "bench-fs: skipped (needs root and /dev/fuse)"; exit 0; fi
MB=${BENCH_MB:-256}
d=$(mktemp -d /tmp/foliofs-bench.XXXXXX)
export FOLIOFS_RUNDIR=$d/run
cleanup() { "$root/bin/foliofs" umount "$d/mnt" >/dev/null 2>&1 || true; rm -rf "$d"; }
trap cleanup EXIT
mkdir -p "$d/mnt" "$d/base"
"$root/bin/foliofs" mkfs --size 4G "$d/img" >/dev/null
"$root/bin/foliofs" mount "$d/img" "$d/mnt"
rate() { # dd's last line -> MB/s
	sed -n 's/.* copied, \([0-9.]*\) s, .*/\1/p' | awk -v mb="$MB" '{ printf "%.0f", mb * 1.048576 / $1 }'
}
w_f=$(dd if=/dev/zero of="$d/mnt/f" bs=1M count="$MB" conv=fsync 2>&1 | rate)
w_b=$(dd if=/dev/zero of="$d/base/f" bs=1M count="$MB" conv=fsync 2>&1 | rate)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
r_f=$(dd if="$d/mnt/f" of=/dev/null bs=1M 2>&1 | rate)
r_b=$(dd if="$d/base/f" of=/dev/null bs=1M 2>&1 | rate)
t0=$(date +%s.%N); cp -a "$root/src" "$root/test" "$root/native" "$d/mnt/" ; t1=$(date +%s.%N)
cp -a "$root/src" "$root/test" "$root/native" "$d/base/"; t2=$(date +%s.%N)
files=$(find "$root/src" "$root/test" "$root/native" | wc -l)
echo "foliofs bench (fs): $MB MiB dd through the mount vs the image's own directory"
printf '%-34s foliofs %6s MB/s   baseline %6s MB/s\n' "sequential write (1 MiB, fsync)" "$w_f" "$w_b"
printf '%-34s foliofs %6s MB/s   baseline %6s MB/s\n' "sequential read (1 MiB)" "$r_f" "$r_b"
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$files" 'BEGIN { printf "%-34s foliofs %6.3f s      baseline %6.3f s\n", "cp -a of " n " files", b - a, c - b }'
"$root/bin/foliofs" stats --json "$d/mnt" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log("btree after the run: height "+j.btree.height+", "+j.btree.commits+" commits, restarts "+JSON.stringify(j.btree.restarts))})'
