# foliofs in a container: Debian 12 "bookworm" with Node 20.
#
#   docker build -t foliofs .
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN \
#     --security-opt apparmor=unconfined foliofs          # runs the test suite
#
# Serving a mount to the host (README, "Docker"): bind a host directory with
# rshared propagation and run `foliofs mount --foreground` in it.
#
# The build stage has the compiler and builds the native addons (better-sqlite3,
# the patched fuse-native against libfuse3-dev, native/foliofs-ioctl) against
# this image's own Node headers, then the TypeScript; the runtime stage gets the
# built tree plus what the tests use (fuse3, which brings libfuse3-3, attr,
# xfsprogs, e2fsprogs, python3, strace), no toolchain. Both
# stages start from the same BASE_IMAGE, so the addons match its Node; any
# Debian 12 image with Node 20 in it works (e.g. node:20-bookworm-slim).
ARG BASE_IMAGE=node:20-bookworm

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 make g++ patch libfuse3-dev pkg-config \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/foliofs
COPY package.json package-lock.json ./
COPY native/ native/
# npm ci runs native/build-binding.js (patch, node-gyp against the local headers)
RUN npm_config_nodedir=$(node -p 'require("path").resolve(process.execPath, "../..")') \
      npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src/ src/
COPY scripts/ scripts/
COPY test/ test/
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      fuse3 attr acl xfsprogs e2fsprogs python3 strace \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/foliofs
COPY --from=build /opt/foliofs/node_modules/ node_modules/
COPY --from=build /opt/foliofs/native/build/ native/build/
COPY --from=build /opt/foliofs/dist/ dist/
COPY package.json ./
COPY bin/ bin/
# sources: dist/'s source maps point at them, and tests copy them as a sample tree
COPY src/ src/
COPY scripts/mount.fuse.foliofs scripts/
COPY test/ test/
RUN ln -s /opt/foliofs/bin/foliofs /usr/local/bin/foliofs \
 && ln -s /opt/foliofs/scripts/mount.fuse.foliofs /sbin/mount.fuse.foliofs \
 && foliofs --help >/dev/null
CMD ["npm", "test"]
