# Shared by the benchmarks that compare three targets in the same run
# (source it; set -euo pipefail first):
#   foliofs  a foliofs mount (image in this run's temp directory)
#   ceiling  scripts/ceiling-fs.ts: an in-memory filesystem on the same
#            patched fuse-native with foliofs's libfuse options (the most a
#            fuse-native filesystem can do here)
#   host     a plain directory on the filesystem holding /tmp
# Sets root, d (temp dir), fmnt, cmnt, host; fmount/fremount_fresh; record,
# median, ratio, row (prints the median of each target and the ratios);
# removes everything on exit. Needs root and /dev/fuse (the caller checks).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
# a fresh image: files land in never-used space
fremount_fresh() { "$FOLIOFS" umount "$fmnt"; rm -f "$d/img"; "$FOLIOFS" mkfs --size 64G "$d/img" >/dev/null; fmount; }
"$FOLIOFS" mkfs --size 64G "$d/img" >/dev/null
fmount
node "$root/dist/scripts/ceiling-fs.js" "$cmnt" >"$d/ceiling.out" 2>"$d/ceiling.err" &
cpid=$!
for _ in $(seq 200); do grep -q '^ready$' "$d/ceiling.out" 2>/dev/null && break; kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
grep -q '^ready$' "$d/ceiling.out" || { echo "bench: ceiling-fs did not mount: $(cat "$d/ceiling.err")"; exit 1; }

dir_of() { case $1 in foliofs) echo "$fmnt" ;; ceiling) echo "$cmnt" ;; host) echo "$host" ;; esac; }
declare -A res # res[test:target]="v1 v2 ..."
record() { res[$1:$2]="${res[$1:$2]:-} $3"; }
median() { printf '%s\n' $1 | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
header() { printf '%-46s %9s %9s %9s %9s %9s\n' "" foliofs ceiling host "f/ceil" "f/host"; }
row() { # test label: the medians of each target and foliofs's ratios to the others
	local f c h
	f=$(median "${res[$1:foliofs]:-0}"); c=$(median "${res[$1:ceiling]:-0}"); h=$(median "${res[$1:host]:-0}")
	printf '%-46s %9s %9s %9s %9s %9s\n' "$2" "$f" "$c" "$h" "$(ratio "$f" "$c")" "$(ratio "$f" "$h")"
}
