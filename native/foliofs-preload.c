/* libfoliofs-preload.so: FS_IOC_FIEMAP for unmodified programs on foliofs.
 *
 * The kernel never forwards FS_IOC_FIEMAP to a FUSE daemon (it answers
 * EOPNOTSUPP itself). Loaded with LD_PRELOAD (`foliofs preload CMD...`),
 * this library catches ioctl(fd, FS_IOC_FIEMAP, ...) on FUSE files and asks
 * the daemon through the private restricted ioctl FOLIOFS_IOC_FIEMAP
 * instead, paging by fm_start through buffers of FOLIOFS_FIEMAP_MAX
 * extents, and fills the caller's struct fiemap whatever its size.
 *
 * Transparent everywhere else: any other request, any file that is not on
 * FUSE, and a FUSE daemon that does not know the private ioctl (ENOTTY,
 * ENOSYS, EOPNOTSUPP on the first call) all get the real ioctl. Only
 * regular files and directories are asked (FIEMAP works on both on ext4;
 * foliofs directories have no data blocks: 0 extents): a FIFO, socket or
 * device node on a FUSE mount is served by the kernel or a driver, not by
 * the daemon, so the private request number must never reach it; they get
 * the real ioctl and its answer (EOPNOTSUPP from the VFS, as on ext4).
 *
 * Paging: the daemon is always asked for a full page (FOLIOFS_FIEMAP_MAX);
 * what the caller's buffer cannot take is kept for the caller's next call,
 * if that call continues exactly where this one stopped (same file, same
 * range end and flags but FIEMAP_FLAG_SYNC). Any other call drops it, so a
 * later run starting over never sees an old page. Tools that page with
 * small buffers (xfs_io) then cost one round trip per 291 extents.
 *
 * Errors: the daemon reports EBADR (unsupported fm_flags) through
 * fm_reserved, since a failing FUSE ioctl copies nothing back; here it
 * becomes -1/EBADR with the unsupported bits in fm_flags, as on ext4.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/fs.h>
#include <linux/fiemap.h>
#include "foliofs_ioctl.h"

#define FUSE_SUPER_MAGIC 0x65735546

typedef int (*ioctl_fn)(int, unsigned long, ...);

static int real_ioctl(int fd, unsigned long req, void *arg)
{
	static ioctl_fn next;

	if (!next)
		next = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
	if (!next) {
		errno = ENOSYS;
		return -1;
	}
	return next(fd, req, arg);
}

static int on_fuse(int fd)
{
	struct statfs s;

	return fstatfs(fd, &s) == 0 && (unsigned long)s.f_type == FUSE_SUPER_MAGIC;
}

/* the rest of the last page the daemon sent, for a caller that pages on */
static __thread struct {
	int valid;
	dev_t dev;
	ino_t ino;
	uint64_t start, end;	/* continues at start; the request's range end */
	uint32_t flags;
	uint32_t pos, n;	/* ext[pos..n) not handed out yet */
	int done;		/* the page ended the range: nothing after ext[n-1] */
	struct fiemap_extent ext[FOLIOFS_FIEMAP_MAX];
} left;

/* copy up to room extents from the kept page if it continues at *start */
static uint32_t take_left(const struct stat *st, uint64_t *start, uint64_t end, uint32_t flags,
			  struct fiemap_extent *to, uint32_t room, int *done)
{
	uint32_t k = 0;

	/* SYNC on a continuation (xfs_io sets it on every call): the first call of the run wrote the file back */
	if (!left.valid || left.dev != st->st_dev || left.ino != st->st_ino || left.start != *start ||
	    left.end != end || left.flags != (flags & ~FIEMAP_FLAG_SYNC)) {
		left.valid = 0;
		return 0;
	}
	while (k < room && left.pos < left.n)
		to[k++] = left.ext[left.pos++];
	if (k)
		*start = to[k - 1].fe_logical + to[k - 1].fe_length;
	left.start = *start;
	if (left.pos == left.n) {
		*done = left.done;
		left.valid = 0;
	}
	return k;
}

/* 1: answered (ret/errno set); 0: not foliofs, use the real ioctl */
static int foliofs_fiemap(int fd, struct fiemap *user, int *ret)
{
	static __thread union {
		struct fiemap fm;
		char raw[FOLIOFS_IOC_BUFSIZE];
	} buf;
	struct fiemap *req = &buf.fm;
	uint64_t start = user->fm_start;
	uint64_t end = user->fm_length > UINT64_MAX - start ? UINT64_MAX : start + user->fm_length;
	uint32_t want = user->fm_extent_count;
	uint32_t got = 0;
	int first = 1, done = 0;
	struct stat st;

	if (fstat(fd, &st) < 0) {
		*ret = -1;
		return 1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
		return 0; /* FIFO, socket, device: not the daemon's */
	if (want) {
		got = take_left(&st, &start, end, user->fm_flags, user->fm_extents, want, &done);
		if (got) first = 0; /* answered by the daemon already: no fallback question */
		if (done || got >= want || start >= end) {
			user->fm_mapped_extents = got;
			*ret = 0;
			return 1;
		}
	} else {
		left.valid = 0;
	}
	for (;;) {
		uint32_t ask = want == 0 ? 0 : FOLIOFS_FIEMAP_MAX;
		uint32_t n, give;

		memset(req, 0, sizeof(*req));
		req->fm_start = start;
		req->fm_length = end - start;
		req->fm_flags = first ? user->fm_flags : (user->fm_flags & ~FIEMAP_FLAG_SYNC);
		left.valid = 0;
		req->fm_extent_count = ask;
		if (real_ioctl(fd, FOLIOFS_IOC_FIEMAP, &buf) < 0) {
			if (first && (errno == ENOTTY || errno == ENOSYS || errno == EOPNOTSUPP))
				return 0; /* some other FUSE filesystem */
			*ret = -1;
			return 1;
		}
		if (req->fm_reserved) { /* an error that carries data (EBADR) */
			user->fm_flags = req->fm_flags;
			user->fm_mapped_extents = 0;
			errno = (int)req->fm_reserved;
			*ret = -1;
			return 1;
		}
		first = 0;
		n = req->fm_mapped_extents;
		if (want == 0) { /* count only: the daemon counted the whole range */
			user->fm_mapped_extents = n;
			break;
		}
		if (n > ask)
			n = ask;
		done = n < ask || n == 0 || (req->fm_extents[n - 1].fe_flags & FIEMAP_EXTENT_LAST);
		give = n < want - got ? n : want - got;
		memcpy(&user->fm_extents[got], req->fm_extents, (size_t)give * sizeof(struct fiemap_extent));
		got += give;
		if (give)
			start = user->fm_extents[got - 1].fe_logical + user->fm_extents[got - 1].fe_length;
		if (give < n) { /* keep the rest for the caller's next call */
			left.valid = 1;
			left.dev = st.st_dev;
			left.ino = st.st_ino;
			left.start = start;
			left.end = end;
			left.flags = user->fm_flags & ~FIEMAP_FLAG_SYNC;
			memcpy(left.ext, &req->fm_extents[give], (size_t)(n - give) * sizeof(struct fiemap_extent));
			left.pos = 0;
			left.n = n - give;
			left.done = done;
			break;
		}
		if (done || got >= want || start >= end)
			break;
	}
	if (want != 0)
		user->fm_mapped_extents = got;
	*ret = 0;
	return 1;
}

int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	void *arg;
	int ret;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (req == FS_IOC_FIEMAP && arg && on_fuse(fd)) {
		int saved = errno;

		if (foliofs_fiemap(fd, (struct fiemap *)arg, &ret))
			return ret;
		errno = saved;
	}
	return real_ioctl(fd, req, arg);
}
