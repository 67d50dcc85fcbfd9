#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tlv.h"
#include "util.h"

/* Features this init implements; a config that requires anything else is refused, not half-applied. */
static const char *const known_features[] = {"base", "network", "egress", "volumes", "kernel_headers", NULL};

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

static int set_string(char **slot, const struct tlv_rec *rec)
{
	char *s = tlv_strdup(rec);
	if (!s)
		return -1;
	free(*slot);
	*slot = s;
	return 0;
}

/* Dotted IPv4 only, as inet_pton reads it (no leading zeros, four parts); copied in canonical form. */
static int set_ipv4(char *out, size_t cap, const struct tlv_rec *rec)
{
	char *s = tlv_strdup(rec);
	struct in_addr a;
	int ok = s && inet_pton(AF_INET, s, &a) == 1 && inet_ntop(AF_INET, &a, out, (socklen_t)cap) != NULL;
	free(s);
	return ok ? 0 : -1;
}

/* aa:bb:cc:dd:ee:ff, unicast, not all zero; stored lowercase to compare with /sys/class/net/<if>/address. */
static int set_mac(char *out, const struct tlv_rec *rec)
{
	if (rec->val_len != 17)
		return -1;
	int nonzero = 0;
	for (size_t i = 0; i < 17; i++) {
		char c = (char)rec->val[i];
		if (i % 3 == 2 ? c != ':' : !isxdigit((unsigned char)c))
			return -1;
		out[i] = (char)tolower((unsigned char)c);
		nonzero |= i % 3 != 2 && c != '0';
	}
	out[17] = 0;
	unsigned first = (unsigned)strtoul(out, NULL, 16);
	return nonzero && !(first & 1) ? 0 : -1;
}

/* Validates what the network records said as a whole, once they are all read. */
static int check_net(struct net_config *n, char *err, size_t cap)
{
	if (!n->enabled)
		return 0;
	const char *missing = !n->mac[0] ? "net.mac" : !n->address[0] ? "net.address" : !n->prefix_len ? "net.prefix_length" : !n->gateway[0] ? "net.gateway" : NULL;
	if (missing) {
		snprintf(err, cap, "config disk: network config without %s", missing);
		return -1;
	}
	if (strcmp(n->address, n->gateway) == 0) {
		snprintf(err, cap, "config disk: net.gateway is the guest's own address");
		return -1;
	}
	if (!n->dns && !(n->dns = calloc(1, sizeof *n->dns))) {
		snprintf(err, cap, "out of memory");
		return -1;
	}
	return 0;
}

const char *config_env_get(const struct guest_config *cfg, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < cfg->envc; i++)
		if (strncmp(cfg->env[i], name, n) == 0 && cfg->env[i][n] == '=')
			return cfg->env[i] + n + 1;
	return NULL;
}

int config_env_default(struct guest_config *cfg, const char *name, const char *value)
{
	if (config_env_get(cfg, name))
		return 0;
	size_t len = strlen(name) + strlen(value) + 2;
	char *s = malloc(len);
	if (!s)
		return -1;
	snprintf(s, len, "%s=%s", name, value);
	if (push(&cfg->env, &cfg->envc, s) < 0) {
		free(s);
		return -1;
	}
	return 0;
}

static int serial_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 20)
		return 0;
	for (; *s; s++)
		if (!(*s == '-' || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
			return 0;
	return 1;
}

/* "<serial> <rw|ro|overlay=<serial>> <path>"; the path is last, so it may hold spaces. */
static int parse_volume(const struct tlv_rec *rec, struct volume_config *v, char *err, size_t cap)
{
	char *s = tlv_strdup(rec);
	char *mode = s ? strchr(s, ' ') : NULL;
	char *path = mode ? strchr(mode + 1, ' ') : NULL;
	memset(v, 0, sizeof *v);
	v->fd = -1;
	if (!path) {
		free(s);
		FAIL("config disk: volume entry must be \"<serial> <mode> <path>\"");
	}
	*mode++ = 0;
	*path++ = 0;
	v->serial = s;
	v->path = path;
	if (strcmp(mode, "rw") == 0) {
		v->readonly = 0;
	} else if (strcmp(mode, "ro") == 0) {
		v->readonly = 1;
	} else if (strncmp(mode, "overlay=", 8) == 0) {
		v->readonly = 1;
		v->overlay_serial = mode + 8;
	} else {
		FAIL("config disk: volume %s: mode must be rw, ro or overlay=<serial>, got \"%s\"", s, mode);
	}
	if (!serial_ok(v->serial) || (v->overlay_serial && !serial_ok(v->overlay_serial)))
		FAIL("config disk: volume serials are 1-20 letters, digits and dashes");
	size_t plen = strlen(path);
	int dotted = strstr(path, "/../") || strstr(path, "/./") || strstr(path, "//") || path[plen - 1] == '/' ||
		     (plen >= 2 && strcmp(path + plen - 2, "/.") == 0) || (plen >= 3 && strcmp(path + plen - 3, "/..") == 0);
	if (path[0] != '/' || dotted)
		FAIL("config disk: volume %s: mount path \"%s\" must be absolute, normalised and not /", s, path);
	return 0;
}

int config_parse(const uint8_t *data, size_t len, struct guest_config *cfg, char *err, size_t cap)
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
		} else if (tlv_key_is(&rec, "machine_id")) {
			bad = set_string(&cfg->machine_id, &rec) < 0;
		} else if (tlv_key_is(&rec, "rootfs_fstype")) {
			bad = set_string(&cfg->rootfs_fstype, &rec) < 0;
		} else if (tlv_key_is(&rec, "skip_agent")) {
			bad = tlv_bool(&rec, &cfg->skip_agent) < 0;
		} else if (tlv_key_is(&rec, "stop_grace_ms")) {
			bad = tlv_u64(&rec, &cfg->stop_grace_ms) < 0;
		} else if (tlv_key_is(&rec, "net.mac")) {
			cfg->net.enabled = 1;
			bad = set_mac(cfg->net.mac, &rec) < 0;
		} else if (tlv_key_is(&rec, "net.address")) {
			cfg->net.enabled = 1;
			bad = set_ipv4(cfg->net.address, sizeof cfg->net.address, &rec) < 0;
		} else if (tlv_key_is(&rec, "net.prefix_length")) {
			uint64_t v;
			cfg->net.enabled = 1;
			bad = tlv_u64(&rec, &v) < 0 || v < 1 || v > 32;
			cfg->net.prefix_len = bad ? 0 : (unsigned)v;
		} else if (tlv_key_is(&rec, "net.gateway")) {
			cfg->net.enabled = 1;
			bad = set_ipv4(cfg->net.gateway, sizeof cfg->net.gateway, &rec) < 0;
		} else if (tlv_key_is(&rec, "net.dns")) {
			char ip[16];
			cfg->net.enabled = 1;
			char *s = set_ipv4(ip, sizeof ip, &rec) == 0 ? strdup(ip) : NULL;
			bad = !s || push(&cfg->net.dns, &cfg->net.ndns, s) < 0;
		} else if (tlv_key_is(&rec, "net.mtu")) {
			uint64_t v;
			cfg->net.enabled = 1;
			bad = tlv_u64(&rec, &v) < 0 || v < 68 || v > 65535;
			cfg->net.mtu = bad ? 0 : (unsigned)v;
		} else if (tlv_key_is(&rec, "ca_bundle")) {
			cfg->egress.enabled = 1;
			bad = set_string(&cfg->egress.ca_bundle, &rec) < 0 || !strstr(cfg->egress.ca_bundle, "-----BEGIN CERTIFICATE-----") ||
			      strstr(cfg->egress.ca_bundle, "PRIVATE KEY") != NULL;
		} else if (tlv_key_is(&rec, "egress.env")) {
			char *s = tlv_strdup(&rec);
			char *eq = s ? strchr(s, '=') : NULL;
			if (!s || !eq || eq == s)
				FAIL("config disk: egress.env entry must be NAME=value");
			bad = push(&cfg->egress.env, &cfg->egress.envc, s) < 0;
		} else if (tlv_key_is(&rec, "volume")) {
			if (cfg->nvol == MAX_VOLUMES)
				FAIL("config disk: more than %d volumes", MAX_VOLUMES);
			if (parse_volume(&rec, &cfg->vol[cfg->nvol], err, cap) < 0)
				return -1;
			cfg->nvol++;
		} else if (tlv_key_is(&rec, "kernel_headers")) {
			bad = set_string(&cfg->headers_serial, &rec) < 0 || !serial_ok(cfg->headers_serial);
		} else if (tlv_key_is(&rec, "volume.scsi")) {
			cfg->vol_scsi = 1;
		} else if (tlv_key_is(&rec, "requires")) {
			char *f = tlv_strdup(&rec);
			if (!f)
				FAIL("config disk: bad requires entry");
			if (!feature_known(f)) {
				snprintf(err, cap, "config disk: requires feature \"%s\" that this guest init does not implement", f);
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
	if (cfg->machine_id && (strlen(cfg->machine_id) != 32 || strspn(cfg->machine_id, "0123456789abcdef") != 32))
		FAIL("config disk: machine_id must be 32 lowercase hex digits");
	if (!cfg->rootfs_fstype && !(cfg->rootfs_fstype = strdup("ext4")))
		FAIL("out of memory");
	if (strcmp(cfg->rootfs_fstype, "ext4") != 0 && strcmp(cfg->rootfs_fstype, "erofs") != 0)
		FAIL("config disk: rootfs_fstype must be ext4 or erofs");
	if (!cfg->env && !(cfg->env = calloc(1, sizeof *cfg->env)))
		FAIL("out of memory");
	if (check_net(&cfg->net, err, cap) < 0)
		return -1;
	if ((cfg->egress.enabled || cfg->egress.envc) && !cfg->egress.ca_bundle)
		FAIL("config disk: egress config without ca_bundle");
	if (cfg->egress.enabled && !cfg->egress.env && !(cfg->egress.env = calloc(1, sizeof *cfg->egress.env)))
		FAIL("out of memory");
	return 0;
}

int config_load(const char *dev, struct guest_config *cfg, char *err, size_t cap)
{
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, cap, "config disk: open %s: %s", dev, strerror(errno));
		return -1;
	}
	uint8_t hdr[CONFIG_HEADER_SIZE];
	if (pread(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
		snprintf(err, cap, "config disk: cannot read header from %s", dev);
		close(fd);
		return -1;
	}
	uint32_t plen = get_le32(hdr + 12);
	if (memcmp(hdr, CONFIG_MAGIC, 8) != 0 || plen > CONFIG_MAX_PAYLOAD) {
		close(fd);
		return config_parse(hdr, sizeof hdr, cfg, err, cap);
	}
	size_t total = CONFIG_HEADER_SIZE + plen;
	uint8_t *data = malloc(total);
	if (!data) {
		close(fd);
		snprintf(err, cap, "out of memory");
		return -1;
	}
	/* The header was read with pread: the file position is still 0. */
	size_t got = read_upto(fd, data, total);
	close(fd);
	int rc = config_parse(data, got, cfg, err, cap);
	free(data);
	return rc;
}
