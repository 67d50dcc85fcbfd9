/*
 * The files docker writes for a container (/etc/hosts, /etc/hostname, /etc/resolv.conf): rendered
 * from the config, kept on a small tmpfs and bind-mounted over the image's paths, so neither the
 * image nor the overlay's copy of it changes, and every boot writes them afresh.
 */
#ifndef HM_ETC_H
#define HM_ETC_H

#include <stddef.h>

#include "config.h"

/* Renderers (pure) for a config with a network: 0, or -1 when cap is too small. */
int render_hosts(const struct guest_config *cfg, char *out, size_t cap);
int render_hostname(const struct guest_config *cfg, char *out, size_t cap);
int render_resolv_conf(const struct guest_config *cfg, char *out, size_t cap);

/*
 * Where a file bind-mount over `path` lands, as runc decides it: symlinks are followed inside the
 * (already switched) root, and a missing file, or a dangling symlink's target, is created empty
 * with its directories. Fails on a directory or a symlink chain longer than 16.
 */
int mount_target(const char *path, char *out, size_t outcap, char *err, size_t cap);

struct gen_file {
	const char *path;
	const char *content;
};
/* Writes each file on a fresh tmpfs and bind-mounts it over its path; the tmpfs has no other mount. */
int bind_generated_files(const struct gen_file *files, size_t n, char *err, size_t cap);

#endif
