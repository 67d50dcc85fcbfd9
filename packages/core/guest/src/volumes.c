#include "volumes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "util.h"

int volumes_find(struct guest_config *cfg, unsigned wait_ms, char *err, size_t cap)
{
	for (size_t i = 0; i < cfg->nvol; i++) {
		struct volume_config *v = &cfg->vol[i];
		if (find_disk_by_serial(v->serial, v->dev, sizeof v->dev, wait_ms) < 0)
			FAIL("no disk with serial %s (volume at %s)", v->serial, v->path);
		if (v->overlay_serial && find_disk_by_serial(v->overlay_serial, v->overlay_dev, sizeof v->overlay_dev, wait_ms) < 0)
			FAIL("no disk with serial %s (overlay of the volume at %s)", v->overlay_serial, v->path);
	}
	return 0;
}

/*
 * A read-only volume under this instance's writable disk. The two disks are mounted on a stage
 * under /dev (devtmpfs, so nothing lands in the image), the overlay is mounted at the path, then
 * the stage mounts are detached: overlayfs keeps its own private clones of its layers, so the
 * program sees only the merged tree.
 */
static int mount_overlay(size_t i, const struct volume_config *v, char *err, size_t cap)
{
	char stage[64], lower[80], upper[80], opts[320];
	snprintf(stage, sizeof stage, "/dev/.hypeman-vol-%zu", i);
	snprintf(lower, sizeof lower, "%s/lower", stage);
	snprintf(upper, sizeof upper, "%s/upper", stage);
	if (mkdir_p(lower, 0700) < 0 || mkdir_p(upper, 0700) < 0)
		FAIL("volume at %s: create %s: %s", v->path, stage, strerror(errno));
	int rc = -1;
	if (mount(v->dev, lower, "ext4", MS_RDONLY, NULL) < 0) {
		snprintf(err, cap, "volume at %s: mount %s read-only: %s", v->path, v->dev, strerror(errno));
		goto out;
	}
	if (mount(v->overlay_dev, upper, "ext4", MS_NOATIME, "noinit_itable") < 0) {
		snprintf(err, cap, "volume at %s: mount its overlay disk %s: %s", v->path, v->overlay_dev, strerror(errno));
		goto out;
	}
	snprintf(opts, sizeof opts, "%s/upper", upper);
	if (mkdir_p(opts, 0755) < 0 || (snprintf(opts, sizeof opts, "%s/work", upper), mkdir_p(opts, 0755)) < 0) {
		snprintf(err, cap, "volume at %s: prepare overlay dirs: %s", v->path, strerror(errno));
		goto out;
	}
	snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, upper, upper);
	if (mkdir_p(v->path, 0755) < 0) {
		snprintf(err, cap, "volume at %s: create the mount point: %s", v->path, strerror(errno));
		goto out;
	}
	if (mount("overlay", v->path, "overlay", 0, opts) < 0) {
		snprintf(err, cap, "volume at %s: mount overlay: %s", v->path, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	umount2(lower, MNT_DETACH);
	umount2(upper, MNT_DETACH);
	rmdir(lower);
	rmdir(upper);
	rmdir(stage);
	return rc;
}

int volumes_mount(struct guest_config *cfg, char *err, size_t cap)
{
	for (size_t i = 0; i < cfg->nvol; i++) {
		struct volume_config *v = &cfg->vol[i];
		if (v->overlay_serial) {
			if (mount_overlay(i, v, err, cap) < 0)
				return -1;
			continue;
		}
		/* Inside the switched root: a symlink on the way resolves within it, as for the workdir. */
		if (mkdir_p(v->path, 0755) < 0)
			FAIL("volume at %s: create the mount point: %s", v->path, strerror(errno));
		/* Read-only: the host replayed any journal before the first read-only attach (a read-only
		 * disk cannot); read-write: noinit_itable, as for the overlay disk. */
		if (mount(v->dev, v->path, "ext4", v->readonly ? MS_RDONLY : 0, v->readonly ? NULL : "noinit_itable") < 0)
			FAIL("volume at %s: mount %s (%s): %s", v->path, v->dev, v->readonly ? "read-only" : "read-write", strerror(errno));
		if (!v->readonly)
			v->fd = open(v->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	}
	return 0;
}

void volumes_quiesce(const struct guest_config *cfg)
{
	for (size_t i = 0; i < cfg->nvol; i++) {
		const struct volume_config *v = &cfg->vol[i];
		if (v->fd < 0)
			continue;
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", v->fd);
		if (mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
			logmsg("remount volume at %s read-only: %s", v->path, strerror(errno));
	}
}
