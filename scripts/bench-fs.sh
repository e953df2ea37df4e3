#!/usr/bin/env bash
# Filesystem throughput, the same work on three targets in the same run:
#   foliofs  a foliofs mount (image in this run's temp directory)
#   ceiling  scripts/ceiling-fs.ts: an in-memory filesystem on the same
#            patched fuse-native with foliofs's libfuse options (the most a
#            fuse-native filesystem can do here)
#   host     a plain directory on the filesystem holding /tmp
# Each measurement runs BENCH_REPEATS times; the median is printed, with the
# ratios foliofs/ceiling and foliofs/host. Needs root and /dev/fuse; prints
# numbers, asserts nothing. Environment (defaults):
#   BENCH_CACHE_MB=256      foliofs page cache size the file is sized against
#   BENCH_MB=4*CACHE_MB     sequential file size in MiB
#   BENCH_REPEATS=3         runs per measurement (median of them)
#   BENCH_RANDOM_WRITES=2000  4 KiB pwrite+fsync ops, into a
#   BENCH_RANDOM_MB=64      file of this many MiB
#   BENCH_FILES=2000        4 KiB files created
#   FOLIOFS_BENCH_OPTS      extra foliofs mount options (-o), only if set
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then echo "bench-fs: skipped (needs root and /dev/fuse)"; exit 0; fi
CACHE_MB=${BENCH_CACHE_MB:-256}
MB=${BENCH_MB:-$((4 * CACHE_MB))}
REPEATS=${BENCH_REPEATS:-3}
RW_OPS=${BENCH_RANDOM_WRITES:-2000}
RW_MB=${BENCH_RANDOM_MB:-64}
FILES=${BENCH_FILES:-2000}
FOLIOFS=$root/bin/foliofs
mount_opts=()
[ -n "${FOLIOFS_BENCH_OPTS:-}" ] && mount_opts=(-o "$FOLIOFS_BENCH_OPTS")

d=$(mktemp -d /tmp/foliofs-bench.XXXXXX)
export FOLIOFS_RUNDIR=$d/run
fmnt=$d/foliofs cmnt=$d/ceiling host=$d/host
cpid=
is_mounted() { grep -q " $1 fuse" /proc/mounts; }
cleanup() {
	set +e
	cd /
	if is_mounted "$fmnt"; then
		"$FOLIOFS" umount "$fmnt" >/dev/null 2>&1 || "$FOLIOFS" umount --lazy "$fmnt" >/dev/null 2>&1 || fusermount3 -uz "$fmnt" 2>/dev/null
	fi
	if [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null; then
		kill -TERM "$cpid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$cpid" 2>/dev/null && kill -KILL "$cpid" 2>/dev/null
	fi
	is_mounted "$cmnt" && { fusermount3 -uz "$cmnt" 2>/dev/null || umount -l "$cmnt" 2>/dev/null; }
	rm -rf "$d"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$fmnt" "$cmnt" "$host"

fmount() { "$FOLIOFS" mount "$d/img" "$fmnt" ${mount_opts[@]+"${mount_opts[@]}"}; }
"$FOLIOFS" mkfs --size 64G "$d/img" >/dev/null
fmount
node "$root/dist/scripts/ceiling-fs.js" "$cmnt" >"$d/ceiling.out" 2>"$d/ceiling.err" &
cpid=$!
for _ in $(seq 200); do grep -q '^ready$' "$d/ceiling.out" 2>/dev/null && break; kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
grep -q '^ready$' "$d/ceiling.out" || { echo "bench-fs: ceiling-fs did not mount: $(cat "$d/ceiling.err")"; exit 1; }

dropped=yes
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || dropped=no; }
now() { date +%s%N; }
declare -A res # res[test:target]="v1 v2 ..."
record() { res[$1:$2]="${res[$1:$2]:-} $3"; }
mbps() { awk -v mb="$1" -v ns="$2" 'BEGIN { printf "%.1f", mb * 1.048576 / (ns / 1e9) }'; }
perhz() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; }
dir_of() { case $1 in foliofs) echo "$fmnt" ;; ceiling) echo "$cmnt" ;; host) echo "$host" ;; esac; }

run_target() { # one repeat of every measurement on target $1
	local t=$1 dir t0 t1 s
	dir=$(dir_of "$t")
	if [ "$t" = foliofs ]; then # a fresh image each repeat: files land in never-used space
		"$FOLIOFS" umount "$fmnt"; rm -f "$d/img"; "$FOLIOFS" mkfs --size 64G "$d/img" >/dev/null; fmount
	fi
	sync
	t0=$(now); dd if=/dev/zero of="$dir/seq" bs=1M count="$MB" status=none; t1=$(now)
	record seqw "$t" "$(mbps "$MB" $((t1 - t0)))"
	if [ "$t" = foliofs ]; then "$FOLIOFS" umount "$fmnt"; fmount; fi # the daemon's caches go cold too
	drop_caches
	t0=$(now); dd if="$dir/seq" of=/dev/null bs=1M status=none; t1=$(now)
	record seqr "$t" "$(mbps "$MB" $((t1 - t0)))"
	# one big file at a time (the ceiling slows down with two 1 GiB files in its heap)
	rm -f "$dir/seq"; sync
	t0=$(now); dd if=/dev/zero of="$dir/seqf" bs=1M count="$MB" conv=fsync status=none; t1=$(now)
	record seqwf "$t" "$(mbps "$MB" $((t1 - t0)))"
	rm -f "$dir/seqf"
	dd if=/dev/zero of="$dir/rnd" bs=1M count="$RW_MB" conv=fsync status=none
	s=$(python3 "$root/scripts/bench-io.py" randwrite "$dir/rnd" "$RW_MB" "$RW_OPS" 7)
	record rndw "$t" "$(perhz "$RW_OPS" "$s")"
	rm -f "$dir/rnd"
	mkdir "$dir/files"; sync
	s=$(python3 "$root/scripts/bench-io.py" create "$dir/files" "$FILES")
	record create "$t" "$(perhz "$FILES" "$s")"
	rm -rf "$dir/files"
}

for r in $(seq "$REPEATS"); do
	for t in foliofs ceiling host; do run_target "$t"; done
done

median() { printf '%s\n' $1 | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
sized="4x BENCH_CACHE_MB=$CACHE_MB"; [ -n "${BENCH_MB:-}" ] && sized="BENCH_MB"
echo "foliofs bench (fs): median of $REPEATS runs; sequential file $MB MiB ($sized)${FOLIOFS_BENCH_OPTS:+; foliofs -o $FOLIOFS_BENCH_OPTS}"
printf '%-46s %9s %9s %9s %9s %9s\n' "" foliofs ceiling host "f/ceil" "f/host"
row() { # test label
	local f c h
	f=$(median "${res[$1:foliofs]}"); c=$(median "${res[$1:ceiling]}"); h=$(median "${res[$1:host]}")
	printf '%-46s %9s %9s %9s %9s %9s\n' "$2" "$f" "$c" "$h" "$(ratio "$f" "$c")" "$(ratio "$f" "$h")"
}
row seqw "seq write 1 MiB, no fsync (MB/s)"
row seqwf "seq write 1 MiB, conv=fsync (MB/s)"
row seqr "cold seq read 1 MiB (MB/s)"
row rndw "$RW_OPS x 4 KiB pwrite+fsync in $RW_MB MiB (op/s)"
row create "create $FILES x 4 KiB files (files/s)"
echo "fresh foliofs image per run; cold read: of the no-fsync file, caches dropped ($dropped), foliofs remounted; the ceiling's data stays in its daemon's memory"
echo "host: plain directory on $(df --output=fstype "$host" | tail -1) ($(df --output=source "$host" | tail -1))"
# the CLI prints a table by default once `stats --json` exists; older ones print JSON and refuse --json
stats=$("$FOLIOFS" stats --json "$fmnt" 2>/dev/null) || stats=$("$FOLIOFS" stats "$fmnt")
printf '%s' "$stats" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log("btree after the run: height "+j.btree.height+", "+j.btree.commits+" commits, restarts "+JSON.stringify(j.btree.restarts))})'
