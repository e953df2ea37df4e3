# foliofs in a container (Debian 12 "bookworm" with Node 20).
#   docker build -t foliofs .
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN \
#     --security-opt apparmor=unconfined foliofs            # runs npm test
FROM node:20-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      fuse3 attr e2fsprogs xfsprogs python3 make g++ patch \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/foliofs
COPY . .
# the README's set-up command: npm ci builds better-sqlite3 and the patched
# fuse-native from source against this image's Node headers
RUN npm run setup
CMD ["npm", "test"]
