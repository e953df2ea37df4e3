/* foliofs-ioctl: issue foliofs private ioctls from the shell.
 *   foliofs-ioctl stats PATH     print the daemon's statistics (JSON)
 *   foliofs-ioctl fiemap [--start N] [--length N] [--count N] [--flags N] PATH
 *                                one raw FOLIOFS_IOC_FIEMAP call, printed as JSON
 *                                (defaults: the whole file, 291 extents, no flags)
 *   foliofs-ioctl remount PATH ro|rw
 *                                switch the daemon serving PATH (foliofs mount -o remount)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/fiemap.h>
#include "foliofs_ioctl.h"

static int usage(void)
{
	fprintf(stderr, "usage: foliofs-ioctl stats PATH | fiemap [--start N] [--length N] [--count N] [--flags N] PATH | remount PATH ro|rw\n");
	return 2;
}

static int parse_u64(const char *s, unsigned long long *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	return errno == 0 && *s && !*end;
}

static int cmd_fiemap(int argc, char **argv)
{
	static union {
		struct fiemap fm;
		char raw[FOLIOFS_IOC_BUFSIZE];
	} buf;
	unsigned long long start = 0, length = ~0ULL, count = FOLIOFS_FIEMAP_MAX, flags = 0, v;
	const char *path = NULL;
	int fd, i;
	unsigned int k;

	for (i = 2; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--start") && parse_u64(argv[i + 1], &v)) start = v, i++;
		else if (i + 1 < argc && !strcmp(argv[i], "--length") && parse_u64(argv[i + 1], &v)) length = v, i++;
		else if (i + 1 < argc && !strcmp(argv[i], "--count") && parse_u64(argv[i + 1], &v) && v <= 0xffffffffULL) count = v, i++;
		else if (i + 1 < argc && !strcmp(argv[i], "--flags") && parse_u64(argv[i + 1], &v) && v <= 0xffffffffULL) flags = v, i++;
		else if (!path && argv[i][0] != '-') path = argv[i];
		else return usage();
	}
	if (!path)
		return usage();
	fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY); /* a FIFO: no wait for a writer */
	if (fd < 0) {
		fprintf(stderr, "foliofs-ioctl: %s: %s\n", path, strerror(errno));
		return 1;
	}
	memset(&buf, 0, sizeof(buf));
	buf.fm.fm_start = start;
	buf.fm.fm_length = length;
	buf.fm.fm_flags = (unsigned int)flags;
	buf.fm.fm_extent_count = (unsigned int)count;
	if (ioctl(fd, FOLIOFS_IOC_FIEMAP, &buf) < 0) {
		int e = errno;
		printf("{\"error\":\"%s\",\"errno\":%d}\n", strerror(e), e);
		close(fd);
		return 1;
	}
	close(fd);
	if (buf.fm.fm_reserved) {
		printf("{\"error\":\"%s\",\"errno\":%u,\"fm_flags\":%u}\n", strerror((int)buf.fm.fm_reserved), buf.fm.fm_reserved, buf.fm.fm_flags);
		return 1;
	}
	printf("{\"mapped\":%u,\"extents\":[", buf.fm.fm_mapped_extents);
	for (k = 0; count && k < buf.fm.fm_mapped_extents && k < FOLIOFS_FIEMAP_MAX; k++) {
		struct fiemap_extent *x = &buf.fm.fm_extents[k];
		printf("%s{\"logical\":%llu,\"physical\":%llu,\"length\":%llu,\"flags\":%u}", k ? "," : "",
		       (unsigned long long)x->fe_logical, (unsigned long long)x->fe_physical,
		       (unsigned long long)x->fe_length, x->fe_flags);
	}
	printf("]}\n");
	return 0;
}

static int cmd_stats(const char *path)
{
	static char buf[FOLIOFS_IOC_BUFSIZE];
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY); /* a FIFO: no wait for a writer */

	if (fd < 0) {
		fprintf(stderr, "foliofs-ioctl: %s: %s\n", path, strerror(errno));
		return 1;
	}
	memset(buf, 0, sizeof(buf));
	if (ioctl(fd, FOLIOFS_IOC_STATS, buf) < 0) {
		int e = errno;
		fprintf(stderr, "foliofs-ioctl: %s: stats ioctl: %s%s\n", path, strerror(e),
			e == ENOTTY ? " (not a foliofs mount?)" : "");
		close(fd);
		return 1;
	}
	close(fd);
	buf[sizeof(buf) - 1] = 0;
	printf("%s\n", buf);
	return 0;
}

static int cmd_remount(const char *path, const char *mode)
{
	static char buf[FOLIOFS_IOC_BUFSIZE];
	int fd;

	if (strcmp(mode, "ro") && strcmp(mode, "rw"))
		return usage();
	fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY); /* a FIFO: no wait for a writer */
	if (fd < 0) {
		fprintf(stderr, "foliofs-ioctl: %s: %s\n", path, strerror(errno));
		return 1;
	}
	memset(buf, 0, sizeof(buf));
	buf[0] = !strcmp(mode, "ro");
	if (ioctl(fd, FOLIOFS_IOC_REMOUNT, buf) < 0) {
		fprintf(stderr, "foliofs-ioctl: %s: remount ioctl: %s\n", path, strerror(errno));
		close(fd);
		return 1;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "remount"))
		return cmd_remount(argv[2], argv[3]);
	if (argc == 3 && !strcmp(argv[1], "stats"))
		return cmd_stats(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "fiemap"))
		return cmd_fiemap(argc, argv);
	return usage();
}
