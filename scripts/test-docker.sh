#!/usr/bin/env bash
# npm run test:docker: build the image from this tree and run the test suite in
# it with the README's `docker run` flags, then serve a mount from a container
# to the host (bind propagation) and use it from both sides.
#
# Docker: the user's own (DOCKER_HOST etc. as usual). Only where
# FOLIOFS_DOCKER_SHARED names a directory, or ../shared/docker exists beside
# this tree, its scripts are used: start-dockerd.sh (a private daemon),
# make-base.sh (a local node:20-bookworm when no registry is reachable) and
# env.sh. Set FOLIOFS_DOCKER_SHARED=none to ignore ../shared/docker.
# IMAGE (default foliofs:test) names the image; builds use --network=host.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FOLIOFS_DOCKER_SHARED:-}
[ -n "$shared" ] || [ ! -d ../shared/docker ] || shared=$(cd ../shared/docker && pwd)
if [ -n "$shared" ] && [ "$shared" != none ]; then
	[ -f "$shared/env.sh" ] || { echo "test:docker: $shared/env.sh not found (FOLIOFS_DOCKER_SHARED)" >&2; exit 2; }
	echo "test:docker: using the Docker set-up in $shared"
	"$shared/start-dockerd.sh"
	. "$shared/env.sh"
	docker image inspect "$BASE_TAG" >/dev/null 2>&1 || "$shared/make-base.sh"
fi
command -v docker >/dev/null || { echo "test:docker: docker not found" >&2; exit 2; }
image=${IMAGE:-foliofs:test}
run_flags=(--device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined)

t0=$(date +%s)
docker build --network=host -t "$image" .
t1=$(date +%s)
echo "test:docker: image $image built in $((t1 - t0))s, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"

log=$(mktemp)
share=
container=
cleanup() {
	rm -f "$log"
	[ -z "$container" ] || docker rm -f "$container" >/dev/null 2>&1 || true
	if [ -n "$share" ]; then
		grep -q " $share/mnt fuse.foliofs " /proc/mounts && umount -l "$share/mnt"
		grep -q " $share " /proc/mounts && umount "$share"
		rm -rf "$share"
	fi
	return 0
}
trap cleanup EXIT

# 1. the suite, as `docker run IMAGE` runs it by default
docker run --rm "${run_flags[@]}" --label foliofs-dev=1 "$image" | tee "$log"
t2=$(date +%s)
summary=$(tail -1 "$log")
echo "test:docker: suite in the container took $((t2 - t1))s: $summary"
case $summary in *" passed, 0 failed, "*) ;; *) echo "test:docker: FAILED: the suite in the container failed" >&2; exit 1 ;; esac

# 2. a container serves a mount to the host: the host directory is bound with
# rshared propagation, so the FUSE mount made inside appears on the host
fail() { echo "test:docker: FAILED: $*" >&2; exit 1; }
share=$(mktemp -d /tmp/foliofs-docker-share.XXXXXX)
mkdir "$share/mnt"
# rshared needs the host side to be a shared mount (it is under systemd;
# not where / is private, as in many containers and chroots)
if [ "$(findmnt -no PROPAGATION --target "$share")" != shared ]; then
	mount --bind "$share" "$share" && mount --make-shared "$share"
fi
docker run --rm -v "$share:/srv/foliofs" "$image" foliofs mkfs --size 64M /srv/foliofs/disk.img
container=$(docker run -d --label foliofs-dev=1 "${run_flags[@]}" -v "$share:/srv/foliofs:rshared" \
	"$image" foliofs mount --foreground /srv/foliofs/disk.img /srv/foliofs/mnt)
for _ in $(seq 100); do grep -q " $share/mnt fuse.foliofs " /proc/mounts && break; sleep 0.1; done
grep -q " $share/mnt fuse.foliofs " /proc/mounts || { docker logs "$container" >&2; fail "the container's mount is not visible on the host"; }
echo "from the host" > "$share/mnt/host.txt"
[ "$(docker exec "$container" cat /srv/foliofs/mnt/host.txt)" = "from the host" ] || fail "the container does not see the host's write"
docker exec "$container" sh -c 'echo "from the container" > /srv/foliofs/mnt/container.txt'
[ "$(cat "$share/mnt/container.txt")" = "from the container" ] || fail "the host does not see the container's write"
docker stop "$container" >/dev/null
code=$(docker wait "$container")
docker rm "$container" >/dev/null; container=
[ "$code" = 0 ] || fail "foliofs mount in the container exited $code on docker stop"
for _ in $(seq 50); do grep -q " $share/mnt fuse.foliofs " /proc/mounts || break; sleep 0.1; done
grep -q " $share/mnt fuse.foliofs " /proc/mounts && fail "the mount stayed on the host after docker stop"
docker run --rm -v "$share:/srv/foliofs" "$image" foliofs fsck /srv/foliofs/disk.img
t3=$(date +%s)
echo "test:docker: host mount served from a container: ok ($((t3 - t2))s)"
echo "test:docker: passed (build $((t1 - t0))s, suite $((t2 - t1))s, host mount $((t3 - t2))s)"
