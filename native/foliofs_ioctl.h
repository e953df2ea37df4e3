/* foliofs private ioctls (restricted FUSE ioctls: size encoded in the command).
 * Mirrors src/ioctl.ts. */
#ifndef FOLIOFS_IOCTL_H
#define FOLIOFS_IOCTL_H
#include <linux/ioctl.h>

#define FOLIOFS_IOC_MAGIC   0xf0
#define FOLIOFS_IOC_BUFSIZE 16383

/* NUL-terminated JSON statistics of the serving daemon */
#define FOLIOFS_IOC_STATS _IOC(_IOC_READ, FOLIOFS_IOC_MAGIC, 1, FOLIOFS_IOC_BUFSIZE)

#endif
