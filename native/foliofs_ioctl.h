/* foliofs private ioctls (restricted FUSE ioctls: size encoded in the command).
 * Mirrors src/ioctl.ts. */
#ifndef FOLIOFS_IOCTL_H
#define FOLIOFS_IOCTL_H
#include <linux/ioctl.h>

#define FOLIOFS_IOC_MAGIC   0xf0
#define FOLIOFS_IOC_BUFSIZE 16383

/* NUL-terminated JSON statistics of the serving daemon */
#define FOLIOFS_IOC_STATS _IOC(_IOC_READ, FOLIOFS_IOC_MAGIC, 1, FOLIOFS_IOC_BUFSIZE)

/* FIEMAP: struct fiemap followed by up to FOLIOFS_FIEMAP_MAX struct
 * fiemap_extent, in and out. fm_reserved != 0 on return: that errno, with
 * data (EBADR: the unsupported flags in fm_flags). */
#define FOLIOFS_FIEMAP_MAX 291
#define FOLIOFS_IOC_FIEMAP _IOC(_IOC_READ | _IOC_WRITE, FOLIOFS_IOC_MAGIC, 2, FOLIOFS_IOC_BUFSIZE)

/* remount: byte 0 of the area is 1 (read-only) or 0 (read-write); the
 * daemon writes back everything before it turns read-only (src/fs.ts
 * setReadonly). Errors: EROFS (the image was opened read-only), EIO. */
#define FOLIOFS_IOC_REMOUNT _IOC(_IOC_READ | _IOC_WRITE, FOLIOFS_IOC_MAGIC, 3, FOLIOFS_IOC_BUFSIZE)

#endif
