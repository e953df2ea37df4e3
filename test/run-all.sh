#!/usr/bin/env bash
# npm test: unit tests (node's test runner) then the xfstests-style shell
# tests through real mounts. Ends with one 'N passed, N failed' line.
set -u
cd "$(dirname "$0")/.."
if [ -x node_modules/.bin/tsc ]; then
	npm run -s build || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
else # the runtime container image: built in its build stage, no compiler here
	[ -f dist/src/cli.js ] || { echo "no TypeScript compiler and no dist/: run npm run setup"; echo "0 passed, 1 failed"; exit 1; }
	echo "run-all: no TypeScript compiler here; testing the existing dist/"
fi
upass=0; ufail=0
out=$(mktemp)
node --test --test-reporter=spec dist/test/unit/ 2>&1 | tee "$out"
urc=${PIPESTATUS[0]}
upass=$(sed -n 's/^ℹ pass \([0-9]*\)$/\1/p' "$out" | tail -1)
ufail=$(sed -n 's/^ℹ fail \([0-9]*\)$/\1/p' "$out" | tail -1)
rm -f "$out"
upass=${upass:-0}; ufail=${ufail:-0}
[ "$urc" -eq 0 ] || [ "$ufail" -gt 0 ] || ufail=1
bash test/check 2>&1 | tee /tmp/foliofs-check.$$
src=${PIPESTATUS[0]}
spass=$(sed -n 's/^shell tests: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) not run$/\1/p' /tmp/foliofs-check.$$)
sfail=$(sed -n 's/^shell tests: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) not run$/\2/p' /tmp/foliofs-check.$$)
sskip=$(sed -n 's/^shell tests: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) not run$/\3/p' /tmp/foliofs-check.$$)
rm -f /tmp/foliofs-check.$$
spass=${spass:-0}; sfail=${sfail:-0}; sskip=${sskip:-0}
[ "$src" -eq 0 ] || [ "$sfail" -gt 0 ] || sfail=1
echo "unit: $upass passed, $ufail failed; shell: $spass passed, $sfail failed, $sskip not run"
echo "$((upass + spass)) passed, $((ufail + sfail)) failed, $sskip skipped"
[ $((ufail + sfail)) -eq 0 ]
