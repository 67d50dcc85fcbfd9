/* The steps between the kernel handing over and the program starting. */
#ifndef HM_BOOT_H
#define HM_BOOT_H

#include <stddef.h>

#include "config.h"

#define MODULES_LIST "/etc/hypeman/modules"

int mount_pseudo_fs(char *err, size_t cap);
#define MAX_PHASE_MODULES 32

/* Modules of one phase, opened: the files can then go away with the initramfs before they load. */
struct module_set {
	int fd[MAX_PHASE_MODULES];
	char name[MAX_PHASE_MODULES][128];
	char params[MAX_PHASE_MODULES][256];
	size_t n;
};

/* Phases: "boot" first, "erofs" for erofs images, "late" once the program started. */
int modules_open(const char *list, const char *phase, struct module_set *set, char *err, size_t cap);
int modules_load(struct module_set *set, char *err, size_t cap);
int load_modules(const char *list, const char *phase, char *err, size_t cap);
/* Mounts the image read-only with an overlay whose upper layer lives on the writable disk, at /newroot. */
int mount_root(const struct guest_config *cfg, const char *rootdev, const char *overlaydev, char *err, size_t cap);
/* Frees the initramfs, makes /newroot the root, then mounts what a container expects in /dev. */
int switch_root(char *err, size_t cap);
/* /etc/machine-id of the switched root, when it has /etc (a link there is replaced). */
int write_machine_id(const char *id, char *err, size_t cap);
int setup_container(const struct guest_config *cfg, char *err, size_t cap);

#endif
