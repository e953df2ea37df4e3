#!/usr/bin/env bash
# libfuse 3 against libfuse 2 (issue 9): the same sequential work on this
# foliofs and on the last foliofs built on fuse-native's bundled libfuse 2
# (commit ff5e90a, unpacked from git and installed with npm ci into the
# temp directory: a few minutes), in the same run. Medians of
# BENCH_REPEATS; prints MB/s and the gain. Needs root, /dev/fuse, the git
# history and npm's registry (or its cache); skips with a reason otherwise.
#   BENCH_LIBFUSE2=0       skip
#   BENCH_LF2_MB=1024      file size in MiB
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
LF2_COMMIT=ff5e90a
if [ "${BENCH_LIBFUSE2:-1}" = 0 ]; then echo "bench-libfuse2: skipped (BENCH_LIBFUSE2=0)"; exit 0; fi
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then echo "bench-libfuse2: skipped (needs root and /dev/fuse)"; exit 0; fi
if ! git -C "$root" cat-file -e "$LF2_COMMIT^{commit}" 2>/dev/null; then echo "bench-libfuse2: skipped (commit $LF2_COMMIT not in this clone's history)"; exit 0; fi
MB=${BENCH_LF2_MB:-1024}
REPEATS=${BENCH_REPEATS:-3}
d=$(mktemp -d /tmp/foliofs-bench-lf2.XXXXXX)
export FOLIOFS_RUNDIR=$d/run
new=$root/bin/foliofs old=$d/lf2/bin/foliofs
cleanup() {
	set +e
	for m in "$d/m3" "$d/m2"; do grep -q " $m fuse" /proc/mounts && { "$new" umount "$m" >/dev/null 2>&1 || fusermount -uz "$m" 2>/dev/null || umount -l "$m"; }; done
	rm -rf "$d"
}
trap cleanup EXIT
mkdir -p "$d/lf2" "$d/m2" "$d/m3"
git -C "$root" archive "$LF2_COMMIT" | tar -x -C "$d/lf2"
if ! (cd "$d/lf2" && npm ci --no-audit --no-fund >"$d/npm.log" 2>&1 && npm run -s build >>"$d/npm.log" 2>&1); then
	echo "bench-libfuse2: skipped (could not install the libfuse 2 build: $(tail -1 "$d/npm.log"))"; exit 0
fi
now() { date +%s%N; }
mbps() { awk -v mb="$1" -v ns="$2" 'BEGIN { printf "%.1f", mb * 1.048576 / (ns / 1e9) }'; }
median() { printf '%s\n' $1 | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
declare -A res
one() { # foliofs-binary mountpoint label
	local f=$1 m=$2 t0 t1
	rm -f "$d/img-$3"*; "$f" mkfs --size 16G "$d/img-$3" >/dev/null; "$f" mount "$d/img-$3" "$m"
	sync; t0=$(now); dd if=/dev/zero of="$m/seq" bs=1M count="$MB" status=none; t1=$(now)
	res[w$3]="${res[w$3]:-} $(mbps "$MB" $((t1 - t0)))"
	"$f" umount "$m"; "$f" mount "$d/img-$3" "$m"; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
	t0=$(now); dd if="$m/seq" of=/dev/null bs=1M status=none; t1=$(now)
	res[r$3]="${res[r$3]:-} $(mbps "$MB" $((t1 - t0)))"
	"$f" umount "$m"; rm -f "$d/img-$3"*
}
for _ in $(seq "$REPEATS"); do one "$old" "$d/m2" 2; one "$new" "$d/m3" 3; done
echo "foliofs bench (libfuse 3 vs libfuse 2): median of $REPEATS runs, $MB MiB file; libfuse 2 build: commit $LF2_COMMIT"
printf '%-36s %12s %12s %8s\n' "" "libfuse 2" "libfuse 3" "gain"
for k in w r; do
	a=$(median "${res[${k}2]}"); b=$(median "${res[${k}3]}")
	label="seq write 1 MiB, no fsync (MB/s)"; [ $k = r ] && label="cold seq read 1 MiB (MB/s)"
	printf '%-36s %12s %12s %7sx\n' "$label" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }')"
done
