#!/usr/bin/env bash
# One-command set-up on Debian 12: system packages, npm dependencies (native
# addons are built from source), the TypeScript build, `foliofs` on PATH and
# the mount(8) helper for `mount -t fuse.foliofs`. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
	echo "setup: Node.js 20 is required (found $(node --version 2>/dev/null || echo none))" >&2
	exit 1
fi

# fuse3 gives fusermount3 and /dev/fuse handling (never apt-install 'fuse': it removes fuse3);
# libfuse3-dev + pkg-config: fuse-native is rebuilt against the system libfuse 3;
# attr/acl/e2fsprogs/xfsprogs/python3/strace are used by the tests (getfattr, setfacl, filefrag, chattr, xfs_io, strace).
pkgs="fuse3 libfuse3-dev pkg-config attr acl e2fsprogs xfsprogs python3 strace make g++ patch"
missing=
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "setup: installing$missing"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# native addons build against the running Node's own headers (no prebuilt or header downloads)
prefix=$(node -p 'require("path").resolve(process.execPath, "../..")')
for dir in "$prefix" /usr; do
	if [ -f "$dir/include/node/node_api.h" ]; then export npm_config_nodedir=$dir; break; fi
done
npm ci --no-audit --no-fund
npm run build

bindir=/usr/local/bin
$SUDO ln -sf "$PWD/bin/foliofs" "$bindir/foliofs"
$SUDO ln -sf "$PWD/scripts/mount.fuse.foliofs" /sbin/mount.fuse.foliofs
if [ ! -e /dev/fuse ]; then
	$SUDO modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || echo "setup: warning: /dev/fuse is missing; mounting will fail" >&2
echo "setup: done. Try: foliofs mkfs /tmp/foo.img && mkdir -p /mnt/x && foliofs mount /tmp/foo.img /mnt/x"
