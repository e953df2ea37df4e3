#!/usr/bin/env bash
# Metadata speed (issue 11), the same work on three targets in the same run
# (foliofs, the in-memory ceiling, the host directory: scripts/bench-lib.sh):
# create, stat, ls -l, rename and unlink of BENCH_META_FILES empty files in
# one directory and across 100 directories (ops/s), unlink of
# BENCH_META_FILES/4 files of 4 KiB written back first (their blocks are
# freed too), and a fixed fsstress-like mix of metadata and small-data
# operations (scripts/bench-meta.py; seconds). Medians of BENCH_REPEATS
# runs; a fresh foliofs image per run. Needs root and /dev/fuse; prints
# numbers, asserts nothing. Environment (defaults):
#   BENCH_META_FILES=20000   files per layout (the issue's 100000 takes ~15 min)
#   BENCH_META_MIXED=20000   operations of the mixed workload
#   BENCH_REPEATS=3
set -euo pipefail
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then echo "bench-meta: skipped (needs root and /dev/fuse)"; exit 0; fi
N=${BENCH_META_FILES:-20000}
MIXED=${BENCH_META_MIXED:-20000}
REPEATS=${BENCH_REPEATS:-3}
. "$(dirname "$0")/bench-lib.sh"

run_target() { # one repeat on target $1
	local t=$1 dir json k
	dir=$(dir_of "$t")
	[ "$t" = foliofs ] && fremount_fresh
	for layout in 1 100; do
		mkdir "$dir/m"
		json=$(python3 "$root/scripts/bench-meta.py" tree "$dir/m" "$N" "$layout")
		for k in create stat lsl rename unlink; do
			record "$k$layout" "$t" "$(printf '%s' "$json" | python3 -c "import json,sys; print(json.load(sys.stdin)['$k'])")"
		done
		rm -rf "$dir/m"
	done
	mkdir "$dir/r"
	json=$(python3 "$root/scripts/bench-meta.py" rmdata "$dir/r" $((N / 4)))
	record rmdata "$t" "$(printf '%s' "$json" | python3 -c "import json,sys; print(json.load(sys.stdin)['rmdata'])")"
	rm -rf "$dir/r"
	mkdir "$dir/x"
	json=$(python3 "$root/scripts/bench-meta.py" mixed "$dir/x" "$MIXED" 11)
	record mixed "$t" "$(printf '%s' "$json" | python3 -c "import json,sys; print(json.load(sys.stdin)['mixed'])")"
	rm -rf "$dir/x"
}

for _ in $(seq "$REPEATS"); do
	for t in foliofs ceiling host; do run_target "$t"; done
done

echo "foliofs bench (metadata): median of $REPEATS runs; $N files per layout${FOLIOFS_BENCH_OPTS:+; foliofs -o $FOLIOFS_BENCH_OPTS}"
header
for layout in 1 100; do
	where="in 1 dir"; [ "$layout" = 100 ] && where="in 100 dirs"
	row "create$layout" "create $where (files/s)"
	row "stat$layout" "stat $where (files/s)"
	row "lsl$layout" "ls -l $where (entries/s)"
	row "rename$layout" "rename $where (files/s)"
	row "unlink$layout" "unlink $where (files/s)"
done
row rmdata "unlink of 4 KiB files written back (files/s)"
f=$(median "${res[mixed:foliofs]}"); c=$(median "${res[mixed:ceiling]}"); h=$(median "${res[mixed:host]}")
# seconds, so the ratios read the other way: foliofs takes f/ceil times the ceiling's time
printf '%-46s %9s %9s %9s %9s %9s\n' "mixed workload, $MIXED ops (s; lower is better)" "$f" "$c" "$h" "$(ratio "$f" "$c")x" "$(ratio "$f" "$h")x"
echo "  (the ceiling itself takes $(ratio "$c" "$h")x the host's time: no FUSE filesystem here goes below that)"
stats=$("$FOLIOFS" stats --json "$fmnt")
printf '%s' "$stats" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const r=j.requests;console.log("foliofs requests (last run): "+r.total+", longest synchronous handler "+r.maxSyncMs.toFixed(1)+" ms ("+r.maxSyncOp+")");console.log("  daemon time by operation (ms, top 6): "+Object.entries(r.msByOp).sort((a,b)=>b[1]-a[1]).slice(0,6).map(([k,v])=>k+" "+Math.round(v)).join(", "))})'
