#!/usr/bin/env bash
# Filesystem throughput, the same work on three targets in the same run
# (foliofs, the in-memory ceiling, the host directory: scripts/bench-lib.sh).
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
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then echo "bench-fs: skipped (needs root and /dev/fuse)"; exit 0; fi
CACHE_MB=${BENCH_CACHE_MB:-256}
MB=${BENCH_MB:-$((4 * CACHE_MB))}
REPEATS=${BENCH_REPEATS:-3}
RW_OPS=${BENCH_RANDOM_WRITES:-2000}
RW_MB=${BENCH_RANDOM_MB:-64}
FILES=${BENCH_FILES:-2000}
. "$(dirname "$0")/bench-lib.sh"

dropped=yes
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || dropped=no; }
now() { date +%s%N; }
mbps() { awk -v mb="$1" -v ns="$2" 'BEGIN { printf "%.1f", mb * 1.048576 / (ns / 1e9) }'; }
perhz() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; }

run_target() { # one repeat of every measurement on target $1
	local t=$1 dir t0 t1 s
	dir=$(dir_of "$t")
	if [ "$t" = foliofs ]; then # a fresh image each repeat: files land in never-used space
		fremount_fresh
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

sized="4x BENCH_CACHE_MB=$CACHE_MB"; [ -n "${BENCH_MB:-}" ] && sized="BENCH_MB"
echo "foliofs bench (fs): median of $REPEATS runs; sequential file $MB MiB ($sized)${FOLIOFS_BENCH_OPTS:+; foliofs -o $FOLIOFS_BENCH_OPTS}"
header
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
