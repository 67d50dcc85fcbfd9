/*
 * Template boots. With `hypeman.template=FLAGS` on the kernel command line, init prepares
 * everything that does not depend on the instance (modules, the NIC, the ports), reports
 * `template`, and waits on the control port for the host's `go`. The host snapshots the guest at
 * that point and later restores copies of it instead of booting: each copy then gets its own
 * clock, entropy and disks' contents with `go`, and reads its own config as a cold boot does.
 */
#ifndef HM_TEMPLATE_H
#define HM_TEMPLATE_H

#include <stddef.h>

struct template_mode {
	int on;
	int net;   /* the template has a NIC: the net modules are loaded and the NIC found before the wait */
	int erofs; /* the image is erofs: its module is loaded before the wait */
	int agent;   /* the template has the agent's port */
	int headers; /* the kernel headers disk is attached: the template mounts it with the root */
};

/* Reads `hypeman.template=FLAGS` (FLAGS: `+`-separated `net`, `erofs`, `agent`, `headers`, or `1`) from /proc/cmdline. */
void template_mode_read(struct template_mode *t);
/*
 * Waits for "go <unix-ms> <hex-entropy>" on the control port fd (blocking; other lines get an
 * error reply), replies "ok", then sets the clock, mixes the entropy into the kernel's pool and
 * reseeds it, and drops the block devices' caches (the config disk behind them is this
 * instance's, not the template's; the others are the same files, or copies of them). -1 with err on a malformed `go`.
 */
int template_wait_go(int fd, char *err, size_t cap);
/* The parse-and-apply half of the above, for a `go` line without its "go " prefix. */
int template_apply_go(const char *args, char *err, size_t cap);
/* "<unix-ms> <hex-entropy>": sets the clock, credits the entropy and reseeds the CRNG (a copy of a
 * snapshot: a template's at `go`, a fork's at `identity`). */
int reseed_from_host(const char *args, char *err, size_t cap);
/* Drops one block device's cache: its disk's content changed under the guest. */
int drop_block_cache(const char *dev, char *err, size_t cap);

#endif
