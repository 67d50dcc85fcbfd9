#include "template.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/random.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define MAX_ENTROPY 64

void template_mode_read(struct template_mode *t)
{
	char cmdline[4096];
	memset(t, 0, sizeof *t);
	if (read_small_file("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		return;
	const char *p = strstr(cmdline, "hypeman.template=");
	if (!p)
		return;
	p += strlen("hypeman.template=");
	size_t len = strcspn(p, " \n");
	t->on = 1;
	for (const char *f = p; f < p + len;) {
		size_t n = strcspn(f, "+ \n");
		if (n == 3 && strncmp(f, "net", 3) == 0)
			t->net = 1;
		else if (n == 5 && strncmp(f, "erofs", 5) == 0)
			t->erofs = 1;
		else if (n == 5 && strncmp(f, "agent", 5) == 0)
			t->agent = 1;
		else if (n == 7 && strncmp(f, "headers", 7) == 0)
			t->headers = 1;
		f += n + (f[n] == '+');
	}
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Credits the host's randomness to the input pool and makes the CRNG rekey from it now: every copy
 * of the template starts from the same pool state, and only this makes their outputs diverge. */
static int reseed(const uint8_t *bytes, size_t n, char *err, size_t cap)
{
	struct {
		int entropy_count;
		int buf_size;
		uint8_t buf[MAX_ENTROPY];
	} info = {.entropy_count = (int)n * 8, .buf_size = (int)n};
	memcpy(info.buf, bytes, n);
	int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		FAIL("open /dev/urandom: %s", strerror(errno));
	int rc = ioctl(fd, RNDADDENTROPY, &info);
	if (rc == 0)
		rc = ioctl(fd, RNDRESEEDCRNG);
	int e = errno;
	close(fd);
	memset(&info, 0, sizeof info);
	if (rc < 0)
		FAIL("reseed the kernel RNG: %s", strerror(e));
	return 0;
}

/* The kernel read each disk's first blocks when it probed it in the template: those pages belong
 * to the template's files, not this instance's. */
static int drop_block_caches(char *err, size_t cap)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		FAIL("open /sys/block: %s", strerror(errno));
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "vd", 2) != 0 && strncmp(e->d_name, "sd", 2) != 0)
			continue;
		char dev[300];
		snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
		rc = drop_block_cache(dev, err, cap);
	}
	closedir(d);
	return rc;
}

int reseed_from_host(const char *args, char *err, size_t cap)
{
	const char *sp = strchr(args, ' ');
	uint64_t ms;
	if (!sp || parse_u64(args, (size_t)(sp - args), &ms) < 0)
		FAIL("go: expected \"go <unix-ms> <hex-entropy>\"");
	const char *hex = sp + 1;
	size_t hexlen = strlen(hex);
	if (hexlen < 32 || hexlen > 2 * MAX_ENTROPY || hexlen % 2)
		FAIL("go: the entropy must be 16 to %d bytes in lowercase hex", MAX_ENTROPY);
	uint8_t bytes[MAX_ENTROPY];
	for (size_t i = 0; i < hexlen / 2; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			FAIL("go: the entropy must be lowercase hex");
		bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
	if (clock_settime(CLOCK_REALTIME, &ts) < 0)
		FAIL("set the clock: %s", strerror(errno));
	int rc = reseed(bytes, hexlen / 2, err, cap);
	memset(bytes, 0, sizeof bytes);
	return rc;
}

int template_apply_go(const char *args, char *err, size_t cap)
{
	if (reseed_from_host(args, err, cap) < 0)
		return -1;
	return drop_block_caches(err, cap);
}

int drop_block_cache(const char *dev, char *err, size_t cap)
{
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	int rc = fd < 0 ? -1 : ioctl(fd, BLKFLSBUF, 0);
	int e = errno;
	if (fd >= 0)
		close(fd);
	if (rc < 0)
		FAIL("drop the cache of %s: %s", dev, strerror(e));
	return 0;
}

/*
 * The reply to `go`. The host's data can reach the port before the port-open event that says the
 * host is there, and until then a non-blocking write fails with EAGAIN: retry for a while.
 */
static void reply(int fd, const char *line)
{
	size_t len = strlen(line), off = 0;
	for (int tries = 0; off < len && tries < 500; tries++) {
		ssize_t n = write(fd, line + off, len - off);
		if (n > 0)
			off += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EINTR)
			return;
		else
			sleep_ms(4);
	}
}

int template_wait_go(int fd, char *err, size_t cap)
{
	char line[512];
	size_t len = 0;
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int r = poll(&p, 1, 1000);
		if (r < 0 && errno != EINTR)
			FAIL("wait for go: %s", strerror(errno));
		if (r <= 0)
			continue;
		if (!(p.revents & POLLIN)) {
			/* No host on the port yet (a virtio port polls as hung up then): look again shortly. */
			sleep_ms(10);
			continue;
		}
		ssize_t n = read(fd, line + len, sizeof line - 1 - len);
		if (n <= 0) {
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				sleep_ms(10);
			continue;
		}
		len += (size_t)n;
		char *nl;
		while ((nl = memchr(line, '\n', len)) != NULL) {
			*nl = 0;
			size_t used = (size_t)(nl - line) + 1;
			if (strncmp(line, "go ", 3) == 0) {
				int rc = template_apply_go(line + 3, err, cap);
				reply(fd, rc == 0 ? "ok\n" : "error bad go\n");
				return rc;
			}
			reply(fd, "error waiting for go\n");
			memmove(line, line + used, len - used);
			len -= used;
		}
		if (len == sizeof line - 1)
			len = 0; /* no line is that long: drop garbage */
	}
}
