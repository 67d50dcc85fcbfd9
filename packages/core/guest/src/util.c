#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void logmsg(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n = snprintf(line, sizeof line, "hypeman-init: ");
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	(void)write_all(2, line, (size_t)n);
}

size_t read_upto(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

ssize_t read_small_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = cap > 0 ? read_upto(fd, buf, cap - 1) : 0;
	close(fd);
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
		len--;
	buf[len] = 0;
	return (ssize_t)len;
}

int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, text, strlen(text));
	close(fd);
	return rc;
}

int mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(tmp, path, len + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -1;
	struct stat st;
	if (stat(tmp, &st) < 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

static uint64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t uptime_ms(void) { return clock_ms(CLOCK_BOOTTIME); }
uint64_t monotonic_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

uint32_t crc32_ieee(const uint8_t *p, size_t len)
{
	uint32_t crc = 0xffffffffu;
	for (size_t i = 0; i < len; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

int parse_u64(const char *s, size_t len, uint64_t *out)
{
	if (len == 0 || len > 19)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

const char *signal_abbrev(int sig, char *scratch, size_t cap)
{
	const char *abbrev = sigabbrev_np(sig);
	if (abbrev)
		snprintf(scratch, cap, "SIG%s", abbrev);
	else
		snprintf(scratch, cap, "SIG%d", sig);
	return scratch;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

/* Scans dir/<entry>/<attr> for a value equal to want; on a match writes /dev/<entry>. */
static int scan_attr(const char *dir, const char *attr, const char *want, char *dev, size_t cap)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	struct dirent *e;
	int found = -1;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char path[512], value[256];
		snprintf(path, sizeof path, "%s/%s/%s", dir, e->d_name, attr);
		if (read_small_file(path, value, sizeof value) < 0)
			continue;
		if (strcmp(value, want) == 0) {
			snprintf(dev, cap, "/dev/%s", e->d_name);
			found = 0;
			break;
		}
	}
	closedir(d);
	return found;
}

/*
 * A SCSI disk's serial is its VPD page 0x80 (unit serial number), which sysfs gives as the raw
 * page: a 4-byte header whose last two bytes are the length, then the serial (QEMU's scsi-hd
 * puts its `serial=` there). /dev/disk/by-id would need udev, which the guest does not run.
 */
static int scan_scsi_serial(const char *want, char *dev, size_t cap)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return -1;
	struct dirent *e;
	int found = -1;
	while (found < 0 && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "sd", 2) != 0)
			continue;
		char path[512], state[32];
		uint8_t page[256];
		/* A disk being removed (a detach just before) keeps its serial until the kernel is done. */
		snprintf(path, sizeof path, "/sys/block/%s/device/state", e->d_name);
		if (read_small_file(path, state, sizeof state) >= 0 && strcmp(state, "running") != 0)
			continue;
		snprintf(path, sizeof path, "/sys/block/%s/device/vpd_pg80", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		size_t n = read_upto(fd, (char *)page, sizeof page);
		close(fd);
		if (n < 4 || page[1] != 0x80)
			continue;
		size_t len = ((size_t)page[2] << 8) | page[3];
		if (len > n - 4)
			len = n - 4;
		while (len > 0 && (page[4 + len - 1] == ' ' || page[4 + len - 1] == 0))
			len--;
		if (len == strlen(want) && memcmp(page + 4, want, len) == 0) {
			snprintf(dev, cap, "/dev/%s", e->d_name);
			found = 0;
		}
	}
	closedir(d);
	return found;
}

/* Devices and port names appear asynchronously after the drivers load: poll, bounded. */
static int wait_for(const char *dir, const char *attr, const char *want, int scsi, char *dev, size_t cap, unsigned wait_ms)
{
	uint64_t deadline = monotonic_ms() + wait_ms;
	for (;;) {
		if ((scan_attr(dir, attr, want, dev, cap) == 0 || (scsi && scan_scsi_serial(want, dev, cap) == 0)) && access(dev, F_OK) == 0)
			return 0;
		if (monotonic_ms() >= deadline)
			return -1;
		sleep_ms(5);
	}
}

int find_disk_by_serial(const char *serial, char *dev, size_t cap, unsigned wait_ms)
{
	return wait_for("/sys/block", "serial", serial, 1, dev, cap, wait_ms);
}

int virtio_device_present(const char *id)
{
	char scratch[300];
	return scan_attr("/sys/bus/virtio/devices", "device", id, scratch, sizeof scratch) == 0;
}

int find_virtio_port(const char *name, char *dev, size_t cap, unsigned wait_ms)
{
	return wait_for("/sys/class/virtio-ports", "name", name, 0, dev, cap, wait_ms);
}

void buf_reserve(struct buf *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p) {
		logmsg("out of memory");
		abort();
	}
	b->p = p;
	b->cap = cap;
}

void buf_put(struct buf *b, const void *data, size_t len)
{
	buf_reserve(b, len);
	if (len)
		memcpy(b->p + b->len, data, len);
	b->len += len;
}

void buf_consume(struct buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
