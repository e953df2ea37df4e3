/* foliofs-ioctl: issue foliofs private ioctls from the shell.
 *   foliofs-ioctl stats PATH     print the daemon's statistics (JSON)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "foliofs_ioctl.h"

static int usage(void)
{
	fprintf(stderr, "usage: foliofs-ioctl stats PATH\n");
	return 2;
}

static int cmd_stats(const char *path)
{
	static char buf[FOLIOFS_IOC_BUFSIZE];
	int fd = open(path, O_RDONLY);

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

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "stats"))
		return cmd_stats(argv[2]);
	return usage();
}
