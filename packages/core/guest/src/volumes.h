/* Volumes (README.md, "Volumes"): extra ext4 disks mounted at paths of the switched root. */
#ifndef HM_VOLUMES_H
#define HM_VOLUMES_H

#include <stddef.h>

#include "config.h"

/* Finds each volume's disk (and overlay disk) by serial, before the root is switched. */
int volumes_find(struct guest_config *cfg, unsigned wait_ms, char *err, size_t cap);
/* Mounts them in config order inside the switched root, creating missing mount points. */
int volumes_mount(struct guest_config *cfg, char *err, size_t cap);
/* At power off, after sync: read-write volumes remounted read-only, so their journals are clean. */
void volumes_quiesce(const struct guest_config *cfg);

/* Agent built-ins for volumes attached and detached while the program runs (files.h lists them all). */
#define HOTPLUG_WAIT_MS 20000
#define VOLUME_BUSY_EXIT 16 /* umount-volume: the mount is in use (EBUSY); nothing changed. Nothing mounted: 0 */
int volume_mount_cmd(char *const *argv);
int volume_umount_cmd(char *const *argv);

#endif
