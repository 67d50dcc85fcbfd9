#include "egress.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* Comment lines outside PEM blocks are ignored by OpenSSL, GnuTLS, Go and Node; Fedora's own bundle has them. */
#define MARK_BEGIN "# hypeman egress CA (begin): added at boot by hypeman-init, replaced on every boot\n"
#define MARK_END "# hypeman egress CA (end)\n"
#define RHEL_ANCHORS "/etc/pki/ca-trust/source/anchors"
#define MAX_BUNDLE (64u << 20)

/* The system bundles OpenSSL, GnuTLS and Go read by default, in the order the primary one is chosen. */
static const char *const bundles[] = {
	"/etc/ssl/certs/ca-certificates.crt", /* Debian, Ubuntu, Alpine */
	"/etc/pki/tls/certs/ca-bundle.crt",   /* RHEL, Fedora, CentOS, Amazon Linux */
	"/etc/ssl/ca-bundle.pem",	      /* openSUSE */
	"/etc/ssl/cert.pem",		      /* Alpine, LibreSSL; usually a link to one above */
	NULL,
};

/* Runtimes that replace the system store with the file named (point them at the whole bundle), or
 * add to their own store (Node: point it at our CA alone). */
static const char *const bundle_vars[] = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE", NULL};

char *ca_bundle_merge(const char *bundle, size_t len, const char *pem, size_t *outlen)
{
	size_t plen = strlen(pem);
	char *out = malloc(len + plen + sizeof MARK_BEGIN + sizeof MARK_END + 2);
	if (!out)
		return NULL;
	size_t o = 0, i = 0;
	/* Copy everything outside earlier blocks of ours. */
	while (i < len) {
		const char *b = memmem(bundle + i, len - i, MARK_BEGIN, sizeof MARK_BEGIN - 1);
		const char *e = b ? memmem(b, len - (size_t)(b - bundle), MARK_END, sizeof MARK_END - 1) : NULL;
		size_t upto = e ? (size_t)(b - bundle) : len;
		memcpy(out + o, bundle + i, upto - i);
		o += upto - i;
		i = e ? (size_t)(e - bundle) + sizeof MARK_END - 1 : len;
	}
	if (o > 0 && out[o - 1] != '\n')
		out[o++] = '\n';
	memcpy(out + o, MARK_BEGIN, sizeof MARK_BEGIN - 1);
	o += sizeof MARK_BEGIN - 1;
	memcpy(out + o, pem, plen);
	o += plen;
	if (plen > 0 && pem[plen - 1] != '\n')
		out[o++] = '\n';
	memcpy(out + o, MARK_END, sizeof MARK_END - 1);
	o += sizeof MARK_END - 1;
	out[o] = 0;
	*outlen = o;
	return out;
}

static char *read_all(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || (size_t)st.st_size > MAX_BUNDLE) {
		if (fd >= 0)
			close(fd);
		errno = fd < 0 ? errno : EFBIG;
		return NULL;
	}
	char *p = malloc((size_t)st.st_size + 1);
	size_t got = p ? read_upto(fd, p, (size_t)st.st_size) : 0;
	close(fd);
	if (p)
		p[got] = 0;
	*len = got;
	return p;
}

/* Replaces path's content through a temporary file and rename (a crash leaves the old or the new). */
static int replace_file(const char *path, const char *data, size_t len, mode_t mode, uid_t uid, gid_t gid)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s.hypeman-tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, data, len);
	if (rc == 0 && (fchmod(fd, mode) < 0 || fchown(fd, uid, gid) < 0))
		rc = -1;
	close(fd);
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -1;
	if (rc < 0) {
		int e = errno;
		unlink(tmp);
		errno = e;
	}
	return rc;
}

/* Writes a file only when its content differs (a restart finds it as the last boot left it). */
static int ensure_file(const char *path, const char *content, char *err, size_t cap)
{
	size_t len, want = strlen(content);
	char *old = read_all(path, &len);
	int same = old && len == want && memcmp(old, content, len) == 0;
	free(old);
	if (same)
		return 0;
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	*strrchr(dir, '/') = 0;
	if (mkdir_p(dir, 0755) < 0 || replace_file(path, content, want, 0644, 0, 0) < 0)
		FAIL("write %s: %s", path, strerror(errno));
	return 0;
}

static int update_bundle(const char *real, const struct stat *st, const char *pem, char *err, size_t cap)
{
	size_t len, outlen;
	char *old = read_all(real, &len);
	if (!old)
		FAIL("read %s: %s", real, strerror(errno));
	char *merged = ca_bundle_merge(old, len, pem, &outlen);
	int same = merged && outlen == len && memcmp(merged, old, len) == 0;
	free(old);
	if (!merged)
		FAIL("out of memory");
	int rc = same ? 0 : replace_file(real, merged, outlen, st->st_mode & 07777, st->st_uid, st->st_gid);
	free(merged);
	if (rc < 0)
		FAIL("update %s: %s", real, strerror(errno));
	return 0;
}

int egress_install(struct guest_config *cfg, char *err, size_t cap)
{
	const char *pem = cfg->egress.ca_bundle;
	const char *primary = NULL;
	struct stat seen[8];
	size_t nseen = 0;
	for (size_t i = 0; bundles[i]; i++) {
		char real[PATH_MAX];
		struct stat st;
		/* Absent or a dangling link: not this distro's bundle. */
		if (!realpath(bundles[i], real) || stat(real, &st) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (!primary)
			primary = bundles[i];
		int dup = 0;
		for (size_t k = 0; k < nseen; k++)
			dup |= seen[k].st_dev == st.st_dev && seen[k].st_ino == st.st_ino;
		if (dup)
			continue;
		seen[nseen++] = st;
		if (update_bundle(real, &st, pem, err, cap) < 0)
			return -1;
	}
	if (!primary) {
		/* No trust store at all (busybox, scratch, distroless/static): ours becomes it, at Debian's path,
		 * which is where OpenSSL, Go and curl builds look first. Through the proxy it is all that's needed. */
		primary = bundles[0];
		size_t outlen;
		char *merged = ca_bundle_merge("", 0, pem, &outlen);
		if (!merged)
			FAIL("out of memory");
		int rc = ensure_file(primary, merged, err, cap);
		free(merged);
		if (rc < 0)
			return -1;
	}
	/* Where update-ca-certificates (Debian, Alpine) and update-ca-trust (RHEL) pick certificates up, so
	 * a program that rebuilds the bundle at run time keeps our CA. */
	if (ensure_file(CA_DROPIN, pem, err, cap) < 0)
		return -1;
	struct stat st;
	if (stat(RHEL_ANCHORS, &st) == 0 && S_ISDIR(st.st_mode) && ensure_file(RHEL_ANCHORS "/hypeman-egress.crt", pem, err, cap) < 0)
		return -1;

	int oom = 0;
	for (size_t i = 0; bundle_vars[i]; i++)
		oom |= config_env_default(cfg, bundle_vars[i], primary) < 0;
	oom |= config_env_default(cfg, "NODE_EXTRA_CA_CERTS", CA_DROPIN) < 0;
	for (size_t i = 0; i < cfg->egress.envc; i++) {
		char *eq = strchr(cfg->egress.env[i], '=');
		*eq = 0;
		oom |= config_env_default(cfg, cfg->egress.env[i], eq + 1) < 0;
		*eq = '=';
	}
	if (oom)
		FAIL("out of memory");
	return 0;
}
