/* The config disk (serial hm-config): written by the host, read once at boot. Format in README.md. */
#ifndef HM_CONFIG_H
#define HM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAGIC "HMCONFIG"
#define CONFIG_HEADER_SIZE 24
#define CONFIG_FORMAT_VERSION 1
#define CONFIG_MAX_PAYLOAD (16u << 20)

struct guest_config {
	char **argv; /* NULL-terminated */
	size_t argc;
	char **env; /* NULL-terminated, "NAME=value" */
	size_t envc;
	char *workdir;
	char *user;
	char *hostname;
	char *rootfs_fstype;
	int skip_agent;
	uint64_t stop_grace_ms;
};

/* Parses a whole config image (header + payload). On failure returns -1 and fills err. */
int config_parse(const uint8_t *data, size_t len, struct guest_config *cfg, char *err, size_t errcap);
/* Reads and parses the config from a block device. */
int config_load(const char *dev, struct guest_config *cfg, char *err, size_t errcap);

#endif
