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
static int mount_overlay(const struct volume_config *v, char *err, size_t cap)
{
	char stage[64], lower[80], upper[80], opts[320];
	/* By serial: unique among the VM's disks, also for one mounted while the program runs. */
	snprintf(stage, sizeof stage, "/dev/.hypeman-vol-%s", v->serial);
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

/* One volume whose disks were found, at its path (created if missing) in the current root. */
static int volume_mount(struct volume_config *v, char *err, size_t cap)
{
	if (v->overlay_serial)
		return mount_overlay(v, err, cap);
	/* Inside the switched root: a symlink on the way resolves within it, as for the workdir. */
	if (mkdir_p(v->path, 0755) < 0)
		FAIL("volume at %s: create the mount point: %s", v->path, strerror(errno));
	/* Read-only: the host replayed any journal before the first read-only attach (a read-only
	 * disk cannot); read-write: noinit_itable, as for the overlay disk. */
	if (mount(v->dev, v->path, "ext4", v->readonly ? MS_RDONLY : 0, v->readonly ? NULL : "noinit_itable") < 0)
		FAIL("volume at %s: mount %s (%s): %s", v->path, v->dev, v->readonly ? "read-only" : "read-write", strerror(errno));
	if (!v->readonly)
		v->fd = open(v->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return 0;
}

int volumes_mount(struct guest_config *cfg, char *err, size_t cap)
{
	for (size_t i = 0; i < cfg->nvol; i++)
		if (volume_mount(&cfg->vol[i], err, cap) < 0)
			return -1;
	return 0;
}

int volume_mount_cmd(char *const *argv)
{
	char err[512];
	struct volume_config v = {.fd = -1};
	if (!argv[0] || !argv[1] || !argv[2] || argv[3]) {
		fprintf(stderr, "usage: mount-volume SERIAL rw|ro|overlay=SERIAL PATH\n");
		return 2;
	}
	v.serial = argv[0];
	v.path = argv[2];
	if (strcmp(argv[1], "rw") == 0) {
		v.readonly = 0;
	} else if (strcmp(argv[1], "ro") == 0) {
		v.readonly = 1;
	} else if (strncmp(argv[1], "overlay=", 8) == 0 && argv[1][8]) {
		v.readonly = 1;
		v.overlay_serial = argv[1] + 8;
	} else {
		fprintf(stderr, "mode must be rw, ro or overlay=SERIAL, got \"%s\"\n", argv[1]);
		return 2;
	}
	struct guest_config one = {.nvol = 1};
	/* The disk appears once the SCSI driver (loaded by the agent before the first of these) saw
	 * the hot-plug event and scanned the target. A disk of the same serial detached just
	 * before may still be listed until the kernel handled its removal (its I/O already fails): a
	 * failed mount looks again, until the deadline. */
	uint64_t deadline = monotonic_ms() + HOTPLUG_WAIT_MS;
	for (;;) {
		one.vol[0] = v;
		uint64_t now = monotonic_ms();
		if (volumes_find(&one, now < deadline ? (unsigned)(deadline - now) : 0, err, sizeof err) < 0)
			break;
		if (volume_mount(&one.vol[0], err, sizeof err) == 0)
			return 0;
		if (monotonic_ms() >= deadline)
			break;
		sleep_ms(50);
	}
	fprintf(stderr, "%s\n", err);
	return 1;
}

int volume_umount_cmd(char *const *argv)
{
	if (!argv[0] || argv[1]) {
		fprintf(stderr, "usage: umount-volume PATH\n");
		return 2;
	}
	/* Never lazily: a busy mount stays, so the host can refuse the detach and keep the disk. */
	if (umount2(argv[0], 0) < 0) {
		int e = errno;
		/* Nothing mounted there (a detach cut short after the unmount, tried again): done. */
		if (e == EINVAL || e == ENOENT)
			return 0;
		fprintf(stderr, "unmount %s: %s\n", argv[0], strerror(e));
		return e == EBUSY ? VOLUME_BUSY_EXIT : 1;
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
