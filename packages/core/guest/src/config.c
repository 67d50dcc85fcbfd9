#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tlv.h"
#include "util.h"

/* Features this init implements; a config that requires anything else is refused, not half-applied. */
static const char *const known_features[] = {"base", NULL};

static int push(char ***list, size_t *n, char *s)
{
	char **grown = realloc(*list, (*n + 2) * sizeof **list);
	if (!grown)
		return -1;
	grown[(*n)++] = s;
	grown[*n] = NULL;
	*list = grown;
	return 0;
}

static int feature_known(const char *f)
{
	for (size_t i = 0; known_features[i]; i++)
		if (strcmp(known_features[i], f) == 0)
			return 1;
	return 0;
}

#define FAIL(...)                                   \
	do {                                            \
		snprintf(err, errcap, __VA_ARGS__);         \
		return -1;                                  \
	} while (0)

static int set_string(char **slot, const struct tlv_rec *rec)
{
	char *s = tlv_strdup(rec);
	if (!s)
		return -1;
	free(*slot);
	*slot = s;
	return 0;
}

int config_parse(const uint8_t *data, size_t len, struct guest_config *cfg, char *err, size_t errcap)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->stop_grace_ms = 10000;
	if (len < CONFIG_HEADER_SIZE || memcmp(data, CONFIG_MAGIC, 8) != 0)
		FAIL("config disk: bad magic (not a hypeman config disk)");
	uint32_t version = get_le32(data + 8);
	uint32_t plen = get_le32(data + 12);
	uint32_t crc = get_le32(data + 16);
	if (version != CONFIG_FORMAT_VERSION)
		FAIL("config disk: format version %u not supported (this init reads %d)", version, CONFIG_FORMAT_VERSION);
	if (plen > CONFIG_MAX_PAYLOAD || plen > len - CONFIG_HEADER_SIZE)
		FAIL("config disk: payload length %u exceeds the disk", plen);
	const uint8_t *payload = data + CONFIG_HEADER_SIZE;
	if (crc32_ieee(payload, plen) != crc)
		FAIL("config disk: checksum mismatch");

	struct tlv_reader r = {.p = payload, .len = plen};
	struct tlv_rec rec;
	int rc;
	while ((rc = tlv_next(&r, &rec)) == 1) {
		int bad = 0;
		if (tlv_key_is(&rec, "argv")) {
			char *s = tlv_strdup(&rec);
			bad = !s || push(&cfg->argv, &cfg->argc, s) < 0;
		} else if (tlv_key_is(&rec, "env")) {
			char *s = tlv_strdup(&rec);
			char *eq = s ? strchr(s, '=') : NULL;
			if (!s || !eq || eq == s)
				FAIL("config disk: env entry must be NAME=value");
			bad = push(&cfg->env, &cfg->envc, s) < 0;
		} else if (tlv_key_is(&rec, "workdir")) {
			bad = set_string(&cfg->workdir, &rec) < 0;
		} else if (tlv_key_is(&rec, "user")) {
			bad = set_string(&cfg->user, &rec) < 0;
		} else if (tlv_key_is(&rec, "hostname")) {
			bad = set_string(&cfg->hostname, &rec) < 0;
		} else if (tlv_key_is(&rec, "rootfs_fstype")) {
			bad = set_string(&cfg->rootfs_fstype, &rec) < 0;
		} else if (tlv_key_is(&rec, "skip_agent")) {
			bad = tlv_bool(&rec, &cfg->skip_agent) < 0;
		} else if (tlv_key_is(&rec, "stop_grace_ms")) {
			bad = tlv_u64(&rec, &cfg->stop_grace_ms) < 0;
		} else if (tlv_key_is(&rec, "requires")) {
			char *f = tlv_strdup(&rec);
			if (!f)
				FAIL("config disk: bad requires entry");
			if (!feature_known(f)) {
				snprintf(err, errcap, "config disk: requires feature \"%s\" that this guest init does not implement", f);
				free(f);
				return -1;
			}
			free(f);
		}
		if (bad)
			FAIL("config disk: bad value for key %.*s", (int)rec.key_len, rec.key);
	}
	if (rc < 0)
		FAIL("config disk: truncated record");
	if (cfg->argc == 0 || cfg->argv[0][0] == 0)
		FAIL("config disk: no program to run (argv is empty)");
	if (!cfg->workdir && !(cfg->workdir = strdup("/")))
		FAIL("out of memory");
	if (cfg->workdir[0] != '/')
		FAIL("config disk: workdir must be absolute");
	if (!cfg->user && !(cfg->user = strdup("")))
		FAIL("out of memory");
	if (!cfg->hostname && !(cfg->hostname = strdup("hypeman")))
		FAIL("out of memory");
	if (strlen(cfg->hostname) > 64)
		FAIL("config disk: hostname longer than 64 bytes");
	if (!cfg->rootfs_fstype && !(cfg->rootfs_fstype = strdup("ext4")))
		FAIL("out of memory");
	if (strcmp(cfg->rootfs_fstype, "ext4") != 0 && strcmp(cfg->rootfs_fstype, "erofs") != 0)
		FAIL("config disk: rootfs_fstype must be ext4 or erofs");
	if (!cfg->env && !(cfg->env = calloc(1, sizeof *cfg->env)))
		FAIL("out of memory");
	return 0;
}

int config_load(const char *dev, struct guest_config *cfg, char *err, size_t errcap)
{
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errcap, "config disk: open %s: %s", dev, strerror(errno));
		return -1;
	}
	uint8_t hdr[CONFIG_HEADER_SIZE];
	if (pread(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
		snprintf(err, errcap, "config disk: cannot read header from %s", dev);
		close(fd);
		return -1;
	}
	uint32_t plen = get_le32(hdr + 12);
	if (memcmp(hdr, CONFIG_MAGIC, 8) != 0 || plen > CONFIG_MAX_PAYLOAD) {
		close(fd);
		return config_parse(hdr, sizeof hdr, cfg, err, errcap);
	}
	size_t total = CONFIG_HEADER_SIZE + plen;
	uint8_t *data = malloc(total);
	if (!data) {
		close(fd);
		snprintf(err, errcap, "out of memory");
		return -1;
	}
	size_t got = 0;
	while (got < total) {
		ssize_t n = pread(fd, data + got, total - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	int rc = config_parse(data, got, cfg, err, errcap);
	free(data);
	return rc;
}
