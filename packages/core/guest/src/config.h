/* The config disk (serial hm-config): written by the host, read once at boot. Format in README.md. */
#ifndef HM_CONFIG_H
#define HM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAGIC "HMCONFIG"
#define CONFIG_HEADER_SIZE 24
#define CONFIG_FORMAT_VERSION 1
#define CONFIG_MAX_PAYLOAD (16u << 20)

/* The NIC and what goes with it (README.md, "Network"); enabled when the host sent net.* records. */
struct net_config {
	int enabled;
	char mac[18];	    /* lowercase aa:bb:cc:dd:ee:ff, as /sys/class/net/<if>/address shows it */
	char address[16];   /* dotted IPv4 */
	unsigned prefix_len; /* 1..32 */
	char gateway[16];
	char **dns; /* NULL-terminated dotted IPv4 */
	size_t ndns;
	unsigned mtu; /* 0: the device's default */
};

/* Mediated egress (README.md, "Mediated egress"): a CA to trust and proxy variables to default. */
struct egress_config {
	int enabled;
	char *ca_bundle; /* PEM, one or more CERTIFICATE blocks */
	char **env;	 /* NULL-terminated "NAME=value", set only where the environment has no NAME */
	size_t envc;
};

/* One volume (README.md, "Volumes"): the config's `volume` record, and the disks found for it at boot. */
struct volume_config {
	char *serial;
	char *overlay_serial; /* NULL unless mounted with a per-instance writable layer */
	char *path;	      /* absolute, normalised by the host */
	int readonly;	      /* always set with overlay_serial: the volume itself is never written */
	char dev[64], overlay_dev[64];
	int fd; /* O_PATH of a read-write mount, for the read-only remount at power off; -1 otherwise */
};

#define MAX_VOLUMES 64

struct guest_config {
	char **argv; /* NULL-terminated */
	size_t argc;
	char **env; /* NULL-terminated, "NAME=value" */
	size_t envc;
	char *workdir;
	char *user;
	char *hostname;
	char *machine_id; /* 32 hex digits for /etc/machine-id, or NULL to leave the image's */
	char *rootfs_fstype;
	int skip_agent;
	uint64_t stop_grace_ms;
	struct net_config net;
	struct egress_config egress;
	struct volume_config vol[MAX_VOLUMES];
	size_t nvol;
	char *headers_serial; /* the kernel headers disk (README.md, "Kernel headers"); NULL: none */
	char headers_dev[64];
	int vol_scsi; /* some volume is a SCSI disk: its driver loads before the volumes are looked for */
};

/* Parses a whole config image (header + payload). On failure returns -1 and fills err. */
int config_parse(const uint8_t *data, size_t len, struct guest_config *cfg, char *err, size_t errcap);
/* The value of NAME in the environment, or NULL. */
const char *config_env_get(const struct guest_config *cfg, const char *name);
/* Adds "NAME=value" unless the environment has NAME already; -1 only when out of memory. */
int config_env_default(struct guest_config *cfg, const char *name, const char *value);
/* Reads and parses the config from a block device. */
int config_load(const char *dev, struct guest_config *cfg, char *err, size_t errcap);

#endif
