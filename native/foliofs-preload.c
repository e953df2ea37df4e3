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
 * The daemon checks the caller's own fm_start and fm_length (EINVAL,
 * EFBIG); a caller's struct that cannot be read, or extents or a header
 * that cannot be stored, give -1/EFAULT as from the kernel, not SIGSEGV
 * (user_copy).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>
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

/* Reading and writing the caller's memory (its struct fiemap and extents).
 * The kernel copies with copy_from_user/copy_to_user: an address that is
 * not mapped, or (for writes) not writable, gives EFAULT, and so must this
 * library, where a plain load or store would kill the caller with SIGSEGV.
 * process_vm_readv/process_vm_writev on our own pid make the kernel do the
 * copy with those same checks (a read-only page is not written: no
 * FOLL_FORCE): one syscall per copy, no file descriptor, no signal handler,
 * nothing shared between threads, and no ptrace permission needed on one's
 * own process. A seccomp filter may refuse them (ENOSYS or EPERM, some
 * container sandboxes): then the copy goes through a pipe of its own, in
 * PIPE_BUF pieces that an empty nonblocking pipe always takes whole:
 * write() from the source checks that it is readable, read() into the
 * destination that it is writable; anything short is EFAULT. Without even
 * a pipe (out of descriptors), a plain memcpy, as before. */
static int vm_refused; /* process_vm_* refused once: do not ask again */

static int pipe_copy(void *to, const void *from, size_t n)
{
	int p[2], ok = 1;

	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
		memcpy(to, from, n);
		return 0;
	}
	while (ok && n) {
		size_t k = n < PIPE_BUF ? n : PIPE_BUF;

		ok = write(p[1], from, k) == (ssize_t)k && read(p[0], to, k) == (ssize_t)k;
		to = (char *)to + k;
		from = (const char *)from + k;
		n -= k;
	}
	close(p[0]);
	close(p[1]);
	if (!ok) {
		errno = EFAULT;
		return -1;
	}
	return 0;
}

/* copy n bytes from the caller's memory (out: 0) or to it (out: 1); -1/EFAULT if it cannot be done */
static int user_copy(void *ours, void *theirs, size_t n, int out)
{
	struct iovec local = { ours, n }, remote = { theirs, n };
	ssize_t r;

	if (n == 0)
		return 0;
	if (!__atomic_load_n(&vm_refused, __ATOMIC_RELAXED)) {
		r = out ? process_vm_writev(getpid(), &local, 1, &remote, 1, 0)
			: process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
		if (r == (ssize_t)n)
			return 0;
		if (r >= 0 || errno == EFAULT) {
			errno = EFAULT;
			return -1;
		}
		if (errno == ENOSYS || errno == EPERM)
			__atomic_store_n(&vm_refused, 1, __ATOMIC_RELAXED);
	}
	return out ? pipe_copy(theirs, ours, n) : pipe_copy(ours, theirs, n);
}

/* hand extents ext[0..n) to the caller's array at *at: 0, or -1/EFAULT
 * with *at past those that did get there (the kernel counts them mapped) */
static int put_extents(char *uext, uint32_t *at, struct fiemap_extent *ext, uint32_t n)
{
	const size_t sz = sizeof(struct fiemap_extent);
	uint32_t k;

	if (user_copy(ext, uext + (size_t)*at * sz, (size_t)n * sz, 1) == 0) {
		*at += n;
		return 0;
	}
	for (k = 0; k < n && user_copy(&ext[k], uext + (size_t)*at * sz, sz, 1) == 0; k++)
		++*at;
	errno = EFAULT;
	return -1;
}

/* the kernel's limit on fm_extent_count (include/linux/fiemap.h; not in the uapi headers) */
#define FIEMAP_MAX_EXTENTS (UINT32_MAX / sizeof(struct fiemap_extent))

static __thread union {
	struct fiemap fm;
	char raw[FOLIOFS_IOC_BUFSIZE];
} buf;

/* Does the daemon behind fd serve the private FIEMAP ioctl? Asked only when
 * the caller's request fails before any of it reaches the daemon (which
 * otherwise answers that with its first reply): a one-block count. */
static int daemon_serves_fiemap(int fd)
{
	memset(&buf.fm, 0, sizeof(buf.fm));
	buf.fm.fm_length = 1;
	if (real_ioctl(fd, FOLIOFS_IOC_FIEMAP, &buf) == 0)
		return 1;
	return !(errno == ENOTTY || errno == ENOSYS || errno == EOPNOTSUPP);
}

/* 1: answered (ret/errno set); 0: not foliofs, use the real ioctl.
 * As the kernel's ioctl_fiemap: read the caller's struct fiemap (EFAULT),
 * check fm_extent_count (EINVAL, nothing written back), ask the daemon
 * (which checks fm_length, fm_start and fm_flags on the caller's own
 * values), store the extents as they come, and write the struct back with
 * fm_flags and fm_mapped_extents, after an error too; a failed store is
 * EFAULT, whatever else happened. */
static int foliofs_fiemap(int fd, struct fiemap *user, int *ret)
{
	struct fiemap *req = &buf.fm;
	char *uext = (char *)user + offsetof(struct fiemap, fm_extents);
	struct fiemap hdr;
	uint64_t start, end;
	uint32_t want, got = 0;
	int first = 1, done = 0, err = 0;
	struct fiemap_extent last;	/* the last extent handed out */
	struct stat st;

	if (fstat(fd, &st) < 0) {
		*ret = -1;
		return 1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
		return 0; /* FIFO, socket, device: not the daemon's */
	if (user_copy(&hdr, user, sizeof(hdr), 0) < 0)
		err = EFAULT;
	else if (hdr.fm_extent_count > FIEMAP_MAX_EXTENTS)
		err = EINVAL;
	if (err) {
		if (!daemon_serves_fiemap(fd))
			return 0; /* some other FUSE filesystem: the kernel's EOPNOTSUPP comes first */
		errno = err;
		*ret = -1;
		return 1;
	}
	start = hdr.fm_start;
	end = hdr.fm_length > UINT64_MAX - start ? UINT64_MAX : start + hdr.fm_length;
	want = hdr.fm_extent_count;
	/* Each call is answered afresh from the daemon (as the kernel walks
	 * the file at every call): never from a page kept from an earlier
	 * call, which changes since would make stale. The daemon is asked for
	 * no more than the caller has room for, so nothing is left over. */
	for (;;) {
		uint32_t ask = want - got < FOLIOFS_FIEMAP_MAX ? want - got : FOLIOFS_FIEMAP_MAX;
		uint32_t n;

		/* the first request carries the caller's own range, which the daemon checks (fm_length 0: EINVAL, fm_start too far: EFBIG) */
		memset(req, 0, sizeof(*req));
		req->fm_start = start;
		req->fm_length = first ? hdr.fm_length : end - start;
		req->fm_flags = first ? hdr.fm_flags : (hdr.fm_flags & ~FIEMAP_FLAG_SYNC);
		req->fm_extent_count = ask;
		if (real_ioctl(fd, FOLIOFS_IOC_FIEMAP, &buf) < 0) {
			if (first && (errno == ENOTTY || errno == ENOSYS || errno == EOPNOTSUPP))
				return 0; /* some other FUSE filesystem */
			err = errno;
			goto out;
		}
		if (req->fm_reserved) { /* an error that carries data (EBADR) */
			hdr.fm_flags = req->fm_flags;
			err = (int)req->fm_reserved;
			goto out;
		}
		first = 0;
		n = req->fm_mapped_extents;
		if (want == 0) { /* count only: the daemon counted the whole range */
			got = n;
			break;
		}
		if (n > ask)
			n = ask;
		done = n < ask || n == 0 || (req->fm_extents[n - 1].fe_flags & FIEMAP_EXTENT_LAST);
		if (n == 0 && got > 0 && !(last.fe_flags & FIEMAP_EXTENT_LAST)) {
			/* the range ended after a full page (it shrank since, or the
			 * page ended just at its end): the last extent handed out is
			 * the last, as the kernel's single walk would have said */
			last.fe_flags |= FIEMAP_EXTENT_LAST;
			got--;
			if (put_extents(uext, &got, &last, 1) < 0)
				err = EFAULT;
			goto out;
		}
		if (n) {
			last = req->fm_extents[n - 1];
			start = last.fe_logical + last.fe_length;
		}
		if (put_extents(uext, &got, req->fm_extents, n) < 0) {
			err = EFAULT;
			goto out;
		}
		if (done || got >= want || start >= end)
			break;
	}
out:
	hdr.fm_mapped_extents = got;
	if (user_copy(&hdr, user, sizeof(hdr), 1) < 0) {
		err = EFAULT;
	}
	if (err) {
		errno = err;
		*ret = -1;
	} else {
		*ret = 0;
	}
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
	if (req == FS_IOC_FIEMAP && on_fuse(fd)) { /* a NULL arg too: EFAULT on foliofs, as on ext4 */
		int saved = errno;

		if (foliofs_fiemap(fd, (struct fiemap *)arg, &ret))
			return ret;
		errno = saved;
	}
	return real_ioctl(fd, req, arg);
}
