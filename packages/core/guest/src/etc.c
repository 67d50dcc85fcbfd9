#include "etc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* Where the generated files are staged: /dev is ours (devtmpfs), and the directory is gone before the program runs. */
#define STAGE "/dev/.hypeman-files"

static int appendf(char *out, size_t cap, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int appendf(char *out, size_t cap, size_t *len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = *len < cap ? vsnprintf(out + *len, cap - *len, fmt, ap) : -1;
	va_end(ap);
	if (n < 0 || (size_t)n >= cap - *len)
		return -1;
	*len += (size_t)n;
	return 0;
}

int render_hosts(const struct guest_config *cfg, char *out, size_t cap)
{
	size_t len = 0;
	/* docker's lines, the hostname mapped to the NIC's address. */
	const char *dot = strchr(cfg->hostname, '.');
	if (appendf(out, cap, &len,
		    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
		    "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n%s\t%s",
		    cfg->net.address, cfg->hostname) < 0)
		return -1;
	if (dot && appendf(out, cap, &len, " %.*s", (int)(dot - cfg->hostname), cfg->hostname) < 0)
		return -1;
	return appendf(out, cap, &len, "\n");
}

int render_hostname(const struct guest_config *cfg, char *out, size_t cap)
{
	size_t len = 0;
	return appendf(out, cap, &len, "%s\n", cfg->hostname);
}

int render_resolv_conf(const struct guest_config *cfg, char *out, size_t cap)
{
	size_t len = 0;
	if (appendf(out, cap, &len, "# written at boot by hypeman-init from the instance's network config\n") < 0)
		return -1;
	for (size_t i = 0; i < cfg->net.ndns; i++)
		if (appendf(out, cap, &len, "nameserver %s\n", cfg->net.dns[i]) < 0)
			return -1;
	return 0;
}

static int create_empty(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = 0;
		if (mkdir_p(dir, 0755) < 0)
			return -1;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

int mount_target(const char *path, char *out, size_t outcap, char *err, size_t cap)
{
	char cur[PATH_MAX];
	snprintf(cur, sizeof cur, "%s", path);
	for (int hops = 0; hops <= 16; hops++) {
		struct stat st;
		if (lstat(cur, &st) < 0) {
			if (errno != ENOENT)
				FAIL("%s: %s", cur, strerror(errno));
			if (create_empty(cur) < 0)
				FAIL("create %s: %s", cur, strerror(errno));
			snprintf(out, outcap, "%s", cur);
			return 0;
		}
		if (S_ISREG(st.st_mode)) {
			snprintf(out, outcap, "%s", cur);
			return 0;
		}
		if (!S_ISLNK(st.st_mode))
			FAIL("%s is not a regular file", cur);
		char target[PATH_MAX];
		ssize_t n = readlink(cur, target, sizeof target - 1);
		if (n <= 0)
			FAIL("read link %s: %s", cur, n < 0 ? strerror(errno) : "empty");
		target[n] = 0;
		if (target[0] == '/') {
			snprintf(cur, sizeof cur, "%s", target);
		} else {
			char *slash = strrchr(cur, '/');
			size_t keep = slash ? (size_t)(slash - cur) + 1 : 0;
			if (keep + (size_t)n >= sizeof cur)
				FAIL("%s: link target too long", cur);
			memcpy(cur + keep, target, (size_t)n + 1);
		}
	}
	FAIL("%s: more than 16 symbolic links", path);
}

int bind_generated_files(const struct gen_file *files, size_t n, char *err, size_t cap)
{
	if (mkdir(STAGE, 0700) < 0 && errno != EEXIST)
		FAIL("create %s: %s", STAGE, strerror(errno));
	if (mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=256k,nr_inodes=64,mode=0755") < 0) {
		snprintf(err, cap, "mount tmpfs for %s: %s", files[0].path, strerror(errno));
		rmdir(STAGE);
		return -1;
	}
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		char src[64], target[PATH_MAX];
		snprintf(src, sizeof src, STAGE "/%zu", i);
		if (write_file(src, files[i].content) < 0) {
			snprintf(err, cap, "write %s: %s", files[i].path, strerror(errno));
			rc = -1;
		} else if (mount_target(files[i].path, target, sizeof target, err, cap) < 0) {
			rc = -1;
		} else if (mount(src, target, NULL, MS_BIND, NULL) < 0) {
			snprintf(err, cap, "bind-mount over %s: %s", target, strerror(errno));
			rc = -1;
		}
	}
	/* The binds hold the tmpfs; its own mount point goes, so the program sees only the files. */
	umount2(STAGE, MNT_DETACH);
	rmdir(STAGE);
	return rc;
}
