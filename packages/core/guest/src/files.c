#include "files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"
#include "volumes.h"

#define BLOCK 512

static int fail(const char *what, const char *path)
{
	fprintf(stderr, "%s %s: %s\n", what, path, strerror(errno));
	return 1;
}

static int parse_mode(const char *s, mode_t *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 8);
	if (errno || *s == 0 || *end || v > 07777)
		return -1;
	*out = (mode_t)v;
	return 0;
}

static int write_file_cmd(char *const *argv)
{
	mode_t mode;
	if (!argv[0] || !argv[1] || parse_mode(argv[1], &mode) < 0) {
		fprintf(stderr, "usage: write-file PATH MODE\n");
		return 2;
	}
	int fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return fail("cannot create", argv[0]);
	static uint8_t chunk[64 * 1024];
	uint64_t total = 0;
	for (;;) {
		ssize_t n = read(0, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			close(fd);
			return fail("cannot read input for", argv[0]);
		}
		if (n == 0)
			break;
		if (write_all(fd, chunk, (size_t)n) < 0) {
			close(fd);
			return fail("cannot write", argv[0]);
		}
		total += (uint64_t)n;
	}
	/* The umask narrowed the mode at create, and an existing file kept its old one. */
	if (fchmod(fd, mode) < 0 || close(fd) < 0)
		return fail("cannot finish", argv[0]);
	printf("%llu\n", (unsigned long long)total);
	return 0;
}

static int mkdir_cmd(char *const *argv)
{
	mode_t mode;
	if (!argv[0] || !argv[1] || parse_mode(argv[1], &mode) < 0) {
		fprintf(stderr, "usage: mkdir PATH MODE\n");
		return 2;
	}
	if (mkdir_p(argv[0], 0755) < 0 && errno != EEXIST)
		return fail("cannot create directory", argv[0]);
	struct stat st;
	if (stat(argv[0], &st) < 0)
		return fail("cannot create directory", argv[0]);
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "cannot create directory %s: a file of that name exists\n", argv[0]);
		return 1;
	}
	if (chmod(argv[0], mode) < 0)
		return fail("cannot chmod", argv[0]);
	return 0;
}

/* --- tar writer --------------------------------------------------------------------------- */

static int out_err;

static void out(const void *p, size_t len)
{
	if (!out_err && write_all(1, p, len) < 0)
		out_err = errno ? errno : EIO;
}

/* An octal field of `width` bytes (width-1 digits and a NUL); base-256 when the value needs more. */
static void num_field(char *f, size_t width, uint64_t v)
{
	uint64_t max = 1;
	for (size_t i = 0; i < width - 1; i++)
		max *= 8;
	if (v < max) {
		for (size_t i = width - 1; i > 0; i--, v >>= 3)
			f[i - 1] = (char)('0' + (v & 7));
		f[width - 1] = 0;
		return;
	}
	memset(f, 0, width);
	f[0] = (char)0x80;
	for (size_t i = width - 1; i > 0 && v; i--, v >>= 8)
		f[i] = (char)(v & 0xff);
}

static void header(const char *name, char type, const struct stat *st, uint64_t size, const char *link);

/* GNU long name / long link record ('L' / 'K') before a header whose field is too short. */
static void long_record(char type, const char *value)
{
	size_t len = strlen(value) + 1;
	struct stat st = {.st_mode = 0644};
	header("././@LongLink", type, &st, len, "");
	out(value, len);
	static const char zeros[BLOCK];
	if (len % BLOCK)
		out(zeros, BLOCK - len % BLOCK);
}

static void header(const char *name, char type, const struct stat *st, uint64_t size, const char *link)
{
	if (type != 'L' && type != 'K') {
		if (strlen(name) > 100)
			long_record('L', name);
		if (strlen(link) > 100)
			long_record('K', link);
	}
	char h[BLOCK];
	memset(h, 0, sizeof h);
	memcpy(h, name, strnlen(name, 100));
	num_field(h + 100, 8, st->st_mode & 07777);
	num_field(h + 108, 8, st->st_uid);
	num_field(h + 116, 8, st->st_gid);
	num_field(h + 124, 12, size);
	num_field(h + 136, 12, st->st_mtime > 0 ? (uint64_t)st->st_mtime : 0);
	memset(h + 148, ' ', 8);
	h[156] = type;
	memcpy(h + 157, link, strnlen(link, 100));
	memcpy(h + 257, "ustar  ", 8); /* the GNU magic: long names come as 'L'/'K' records */
	unsigned sum = 0;
	for (size_t i = 0; i < BLOCK; i++)
		sum += (unsigned char)h[i];
	snprintf(h + 148, 8, "%06o", sum);
	h[155] = ' ';
	out(h, sizeof h);
}

static int skipped;

static int add(const char *path, const char *name, int follow)
{
	struct stat st;
	if ((follow ? stat(path, &st) : lstat(path, &st)) < 0) {
		fprintf(stderr, "cannot stat %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (S_ISREG(st.st_mode)) {
		int fd = open(path, O_RDONLY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
		if (fd < 0) {
			fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
			return -1;
		}
		/* The size in the header is a promise: a file that changes while read is cut or padded to it. */
		header(name, '0', &st, (uint64_t)st.st_size, "");
		static uint8_t chunk[64 * 1024];
		uint64_t left = (uint64_t)st.st_size;
		while (left && !out_err) {
			size_t want = left < sizeof chunk ? (size_t)left : sizeof chunk;
			size_t got = read_upto(fd, chunk, want);
			if (got < want)
				memset(chunk + got, 0, want - got);
			out(chunk, want);
			left -= want;
		}
		close(fd);
		static const char zeros[BLOCK];
		if (st.st_size % BLOCK)
			out(zeros, BLOCK - (size_t)(st.st_size % BLOCK));
		return 0;
	}
	if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlink(path, target, sizeof target - 1);
		if (n < 0) {
			fprintf(stderr, "cannot read link %s: %s\n", path, strerror(errno));
			return -1;
		}
		target[n] = 0;
		header(name, '2', &st, 0, target);
		return 0;
	}
	if (S_ISDIR(st.st_mode)) {
		char dname[PATH_MAX + 2];
		snprintf(dname, sizeof dname, "%s/", name);
		header(dname, '5', &st, 0, "");
		DIR *d = opendir(path);
		if (!d) {
			fprintf(stderr, "cannot read directory %s: %s\n", path, strerror(errno));
			return -1;
		}
		int rc = 0;
		struct dirent *e;
		while ((e = readdir(d)) && !out_err) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			char child[PATH_MAX], cname[PATH_MAX];
			if ((size_t)snprintf(child, sizeof child, "%s/%s", strcmp(path, "/") ? path : "", e->d_name) >= sizeof child ||
			    (size_t)snprintf(cname, sizeof cname, "%s/%s", name, e->d_name) >= sizeof cname) {
				fprintf(stderr, "path too long under %s\n", path);
				rc = -1;
				continue;
			}
			if (add(child, cname, 0) < 0)
				rc = -1;
		}
		closedir(d);
		return rc;
	}
	/* Devices, FIFOs and sockets have no content to copy. */
	fprintf(stderr, "skipped %s: not a file, directory or symlink\n", path);
	skipped++;
	return 0;
}

static int read_tree_cmd(char *const *argv)
{
	if (!argv[0] || !argv[1]) {
		fprintf(stderr, "usage: read-tree PATH FOLLOW\n");
		return 2;
	}
	const char *path = argv[0];
	/* The entry's name is the last component of PATH ("." for "/"), as `docker cp` names it. */
	char trimmed[PATH_MAX];
	snprintf(trimmed, sizeof trimmed, "%s", path);
	size_t len = strlen(trimmed);
	while (len > 1 && trimmed[len - 1] == '/')
		trimmed[--len] = 0;
	const char *slash = strrchr(trimmed, '/');
	const char *name = !strcmp(trimmed, "/") ? "." : slash ? slash + 1 : trimmed;
	int rc = add(trimmed, name, !strcmp(argv[1], "1"));
	static const char end[2 * BLOCK];
	out(end, sizeof end);
	if (out_err) {
		errno = out_err;
		return fail("cannot write the archive of", path);
	}
	return rc < 0 ? 1 : 0;
}

int builtin_known(const char *name)
{
	return !strcmp(name, "write-file") || !strcmp(name, "mkdir") || !strcmp(name, "read-tree") || !strcmp(name, "mount-volume") ||
	       !strcmp(name, "umount-volume");
}

int run_builtin(const char *name, char *const *argv)
{
	if (!strcmp(name, "write-file"))
		return write_file_cmd(argv);
	if (!strcmp(name, "mkdir"))
		return mkdir_cmd(argv);
	if (!strcmp(name, "read-tree"))
		return read_tree_cmd(argv);
	if (!strcmp(name, "mount-volume"))
		return volume_mount_cmd(argv);
	if (!strcmp(name, "umount-volume"))
		return volume_umount_cmd(argv);
	return 127;
}
