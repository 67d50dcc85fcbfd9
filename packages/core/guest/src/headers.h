/* Kernel headers (README.md, "Kernel headers"): the shared read-only disk and the links into it. */
#ifndef HM_HEADERS_H
#define HM_HEADERS_H

#include <stddef.h>

#include "config.h"

/* Where the disk is mounted in the switched root: beside the /usr/src links that point into it. */
#define HEADERS_MNT "/usr/src/.hypeman-headers"

/* Finds the headers disk by serial, before the root is switched (a no-op without one). */
int headers_find(struct guest_config *cfg, unsigned wait_ms, char *err, size_t cap);
/*
 * In the switched root: mounts it read-only at HEADERS_MNT, points /lib/modules/$(uname -r)/build
 * (and source, when the disk has one) into it, and links each of its src/ trees into /usr/src.
 */
int headers_mount(const struct guest_config *cfg, char *err, size_t cap);

#endif
