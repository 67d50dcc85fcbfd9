#include "boot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util.h"

static int mount_one(const char *src, const char *target, const char *fstype, unsigned long flags, const char *data)
{
	if (mkdir_p(target, 0755) < 0)
		return -1;
	return mount(src, target, fstype, flags, data);
}

int mount_pseudo_fs(char *err, size_t cap)
{
	if (mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		FAIL("mount /proc: %s", strerror(errno));
	if (mount_one("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		FAIL("mount /sys: %s", strerror(errno));
	if (mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
		FAIL("mount /dev: %s", strerror(errno));
	/* The kernel opened /dev/console from the initramfs before devtmpfs existed (or failed to): reopen. */
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	return 0;
}

int modules_open(const char *list, const char *phase, struct module_set *set, char *err, size_t cap)
{
	memset(set, 0, sizeof *set);
	FILE *f = fopen(list, "re");
	if (!f)
		return errno == ENOENT ? 0 : (snprintf(err, cap, "open %s: %s", list, strerror(errno)), -1);
	char line[512];
	int rc = 0;
	size_t plen = strlen(phase);
	/* Lines are "phase path [params]", in dependency order (computed on the host from modules.dep). */
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (strncmp(line, phase, plen) != 0 || line[plen] != ' ')
			continue;
		if (set->n == MAX_PHASE_MODULES) {
			snprintf(err, cap, "more than %d modules in phase %s", MAX_PHASE_MODULES, phase);
			rc = -1;
			break;
		}
		char *path = line + plen + 1;
		char *params = strchr(path, ' ');
		if (params)
			*params++ = 0;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			snprintf(err, cap, "module %s: %s", path, strerror(errno));
			rc = -1;
			break;
		}
		set->fd[set->n] = fd;
		snprintf(set->name[set->n], sizeof set->name[0], "%s", path);
		snprintf(set->params[set->n], sizeof set->params[0], "%s", params ? params : "");
		set->n++;
	}
	fclose(f);
	if (rc < 0)
		for (size_t i = 0; i < set->n; i++)
			close(set->fd[i]);
	return rc;
}

int modules_load(struct module_set *set, char *err, size_t cap)
{
	int rc = 0;
	for (size_t i = 0; i < set->n; i++) {
		long r = rc < 0 ? 0 : syscall(SYS_finit_module, set->fd[i], set->params[i], 0);
		if (r < 0 && errno != EEXIST) {
			snprintf(err, cap, "load module %s: %s", set->name[i], strerror(errno));
			rc = -1;
		}
		close(set->fd[i]);
	}
	set->n = 0;
	return rc;
}

int load_modules(const char *list, const char *phase, char *err, size_t cap)
{
	struct module_set set;
	if (modules_open(list, phase, &set, err, cap) < 0)
		return -1;
	return modules_load(&set, err, cap);
}

int mount_root(const struct guest_config *cfg, const char *rootdev, const char *overlaydev, char *err, size_t cap)
{
	if (mount_one(rootdev, "/mnt/image", cfg->rootfs_fstype, MS_RDONLY, NULL) < 0)
		FAIL("mount image disk %s (%s) read-only: %s", rootdev, cfg->rootfs_fstype, strerror(errno));
	/* noinit_itable: the host formats lazily; zeroing inode tables in a TCG guest would eat its CPU. */
	if (mount_one(overlaydev, "/mnt/overlay", "ext4", MS_NOATIME, "noinit_itable") < 0)
		FAIL("mount overlay disk %s (ext4): %s", overlaydev, strerror(errno));
	if (mkdir_p("/mnt/overlay/upper", 0755) < 0 || mkdir_p("/mnt/overlay/work", 0755) < 0)
		FAIL("prepare overlay dirs: %s", strerror(errno));
	if (mount_one("overlay", "/newroot", "overlay", 0,
		      "lowerdir=/mnt/image,upperdir=/mnt/overlay/upper,workdir=/mnt/overlay/work") < 0)
		FAIL("mount overlay: %s", strerror(errno));
	return 0;
}

/* Deletes the initramfs files (they would pin memory forever), never crossing into other mounts. */
static void delete_tree(int dirfd, dev_t rootdev)
{
	DIR *d = fdopendir(dirfd);
	if (!d) {
		close(dirfd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != rootdev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
			if (sub >= 0)
				delete_tree(sub, rootdev);
			unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dirfd, e->d_name, 0);
		}
	}
	closedir(d);
}

int switch_root(char *err, size_t cap)
{
	static const char *const moved[] = {"/proc", "/sys", "/dev", NULL};
	for (size_t i = 0; moved[i]; i++) {
		char target[64];
		snprintf(target, sizeof target, "/newroot%s", moved[i]);
		if (mkdir_p(target, 0755) < 0 || mount(moved[i], target, NULL, MS_MOVE, NULL) < 0)
			FAIL("move %s into the new root: %s", moved[i], strerror(errno));
	}
	struct stat st;
	if (stat("/", &st) == 0) {
		int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0)
			delete_tree(fd, st.st_dev);
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
		FAIL("switch root: %s", strerror(errno));
	return 0;
}

/* The instance's own identity (systemd, D-Bus and others key on it): images ship one, or an empty file,
 * and every instance of an image would share it. A link in the image is replaced, not followed. */
int write_machine_id(const char *id, char *err, size_t cap)
{
	struct stat st;
	if (stat("/etc", &st) < 0 || !S_ISDIR(st.st_mode))
		return 0;
	char line[40];
	int n = snprintf(line, sizeof line, "%s\n", id);
	/* A plain file already there (an instance's earlier boot, a fork's source) is rewritten in place:
	 * under TCG, half the cost of a new inode. Anything else (a link, a FIFO, a device) is replaced. */
	struct stat before, now;
	if (lstat("/etc/machine-id", &before) == 0 && S_ISREG(before.st_mode) && before.st_nlink == 1) {
		int fd = open("/etc/machine-id", O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		int ok = fd >= 0 && fstat(fd, &now) == 0 && now.st_ino == before.st_ino && now.st_dev == before.st_dev && S_ISREG(now.st_mode);
		/* Owner, mode and length as a new file would have them; each changed only when it differs. */
		if (ok && (now.st_uid != 0 || now.st_gid != 0))
			ok = fchown(fd, 0, 0) == 0;
		if (ok && (now.st_mode & 07777) != 0444)
			ok = fchmod(fd, 0444) == 0;
		if (ok && now.st_size != n)
			ok = ftruncate(fd, 0) == 0;
		if (ok)
			ok = write_all(fd, line, (size_t)n) == 0;
		if (fd >= 0)
			close(fd);
		if (ok)
			return 0;
	}
	if (unlink("/etc/machine-id") < 0 && errno != ENOENT)
		FAIL("replace /etc/machine-id: %s", strerror(errno));
	int fd = open("/etc/machine-id", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
	if (fd < 0)
		FAIL("write /etc/machine-id: %s", strerror(errno));
	int rc = write_all(fd, line, (size_t)n);
	close(fd);
	if (rc < 0)
		FAIL("write /etc/machine-id: %s", strerror(errno));
	return 0;
}

int setup_container(const struct guest_config *cfg, char *err, size_t cap)
{
	if (mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
		FAIL("mount /dev/pts: %s", strerror(errno));
	/* With a private devpts instance, /dev/ptmx must be the instance's own ptmx. */
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") < 0)
		FAIL("link /dev/ptmx: %s", strerror(errno));
	if (mount_one("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k") < 0)
		FAIL("mount /dev/shm: %s", strerror(errno));
	static const char *const links[][2] = {
		{"/proc/self/fd", "/dev/fd"},
		{"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"},
		{"/proc/self/fd/2", "/dev/stderr"},
	};
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
		if (symlink(links[i][0], links[i][1]) < 0 && errno != EEXIST)
			FAIL("link %s: %s", links[i][1], strerror(errno));
	if (sethostname(cfg->hostname, strlen(cfg->hostname)) < 0)
		FAIL("set hostname: %s", strerror(errno));
	if (cfg->machine_id && write_machine_id(cfg->machine_id, err, cap) < 0)
		return -1;
	/* docker creates a missing working directory (owned by root) rather than failing. */
	if (mkdir_p(cfg->workdir, 0755) < 0)
		FAIL("create working directory %s: %s", cfg->workdir, strerror(errno));
	return 0;
}
