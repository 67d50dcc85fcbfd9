#include "headers.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "util.h"

int headers_find(struct guest_config *cfg, unsigned wait_ms, char *err, size_t cap)
{
	if (cfg->headers_serial && find_disk_by_serial(cfg->headers_serial, cfg->headers_dev, sizeof cfg->headers_dev, wait_ms) < 0)
		FAIL("no disk with serial %s (kernel headers)", cfg->headers_serial);
	return 0;
}

/*
 * Makes `link` a symlink to `target`. A symlink already there is ours from an earlier boot of this
 * instance (the root's writable layer keeps it) and is replaced, so a new kernel gets its own
 * headers; anything else belongs to the image and is left alone.
 */
static int place_link(const char *target, const char *link, char *err, size_t cap)
{
	struct stat st;
	if (lstat(link, &st) == 0) {
		if (!S_ISLNK(st.st_mode)) {
			logmsg("kernel headers: %s exists in the image; left as it is", link);
			return 0;
		}
		if (unlink(link) < 0)
			FAIL("kernel headers: replace %s: %s", link, strerror(errno));
	}
	if (symlink(target, link) < 0)
		FAIL("kernel headers: link %s -> %s: %s", link, target, strerror(errno));
	return 0;
}

int headers_mount(const struct guest_config *cfg, char *err, size_t cap)
{
	if (!cfg->headers_serial)
		return 0;
	if (mkdir_p(HEADERS_MNT, 0755) < 0)
		FAIL("kernel headers: create %s: %s", HEADERS_MNT, strerror(errno));
	if (mount(cfg->headers_dev, HEADERS_MNT, "ext4", MS_RDONLY | MS_NODEV | MS_NOSUID, NULL) < 0)
		FAIL("kernel headers: mount %s read-only at %s: %s", cfg->headers_dev, HEADERS_MNT, strerror(errno));

	struct utsname u;
	if (uname(&u) < 0)
		FAIL("kernel headers: uname: %s", strerror(errno));
	char moddir[96], path[PATH_MAX], target[PATH_MAX];
	snprintf(moddir, sizeof moddir, "/lib/modules/%s", u.release);
	if (mkdir_p(moddir, 0755) < 0)
		FAIL("kernel headers: create %s: %s", moddir, strerror(errno));
	static const char *const names[] = {"build", "source"};
	for (size_t i = 0; i < 2; i++) {
		/* The disk's own links are relative; resolved here, ours point straight at the tree. */
		snprintf(path, sizeof path, HEADERS_MNT "/lib/modules/%s/%s", u.release, names[i]);
		if (!realpath(path, target)) {
			if (i == 0)
				FAIL("kernel headers: the disk has no build tree for the running kernel %s (made for another kernel?)", u.release);
			continue;
		}
		snprintf(path, sizeof path, "%s/%s", moddir, names[i]);
		if (place_link(target, path, err, cap) < 0)
			return -1;
	}

	/* The flavour's Makefile includes the common tree by its absolute /usr/src path, as Debian installs it. */
	DIR *d = opendir(HEADERS_MNT "/src");
	if (!d)
		return 0;
	if (mkdir_p("/usr/src", 0755) < 0) {
		closedir(d);
		FAIL("kernel headers: create /usr/src: %s", strerror(errno));
	}
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(target, sizeof target, HEADERS_MNT "/src/%s", e->d_name);
		snprintf(path, sizeof path, "/usr/src/%s", e->d_name);
		rc = place_link(target, path, err, cap);
	}
	closedir(d);
	return rc;
}
