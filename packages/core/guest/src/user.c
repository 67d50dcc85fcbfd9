#include "user.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define MAX_DB (1u << 20)

static char *slurp(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *data = malloc(MAX_DB + 1);
	size_t len = 0;
	if (data) {
		ssize_t n;
		while (len < MAX_DB && (n = read(fd, data + len, MAX_DB - len)) != 0) {
			if (n < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			len += (size_t)n;
		}
		data[len] = 0;
	}
	close(fd);
	return data;
}

static int parse_id(const char *s, unsigned long *out)
{
	uint64_t v;
	if (parse_u64(s, strlen(s), &v) < 0 || v > 0x7fffffffu)
		return -1;
	*out = (unsigned long)v;
	return 0;
}

/* Splits a colon-separated line in place; returns the number of fields (at most max). */
static size_t split_fields(char *line, char **fields, size_t max)
{
	size_t n = 0;
	fields[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == ':') {
			*p = 0;
			fields[n++] = p + 1;
		}
	}
	return n;
}

static int member_of(const char *members, const char *name)
{
	size_t nlen = strlen(name);
	const char *p = members;
	while (*p) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == nlen && memcmp(p, name, nlen) == 0)
			return 1;
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

int resolve_user(const char *root, const char *spec, struct exec_user *u, char *err, size_t errcap)
{
	memset(u, 0, sizeof *u);
	snprintf(u->home, sizeof u->home, "/");

	char user_arg[256], group_arg[256];
	const char *colon = strchr(spec, ':');
	size_t ulen = colon ? (size_t)(colon - spec) : strlen(spec);
	if (ulen >= sizeof user_arg || (colon && strlen(colon + 1) >= sizeof group_arg)) {
		snprintf(err, errcap, "user spec too long");
		return -1;
	}
	memcpy(user_arg, spec, ulen);
	user_arg[ulen] = 0;
	snprintf(group_arg, sizeof group_arg, "%s", colon ? colon + 1 : "");

	unsigned long uid_num = 0;
	int user_numeric = user_arg[0] == 0 || parse_id(user_arg, &uid_num) == 0;

	char path[512];
	snprintf(path, sizeof path, "%s/etc/passwd", root);
	char *passwd = slurp(path);
	char matched_name[256] = "";
	int matched = 0;
	for (char *line = passwd, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		char *f[7];
		if (line[0] == '#' || split_fields(line, f, 7) < 7)
			continue;
		unsigned long id, gid;
		if (parse_id(f[2], &id) < 0 || parse_id(f[3], &gid) < 0)
			continue;
		int hit = user_numeric ? id == uid_num : strcmp(f[0], user_arg) == 0;
		if (!hit)
			continue;
		u->uid = (uid_t)id;
		u->gid = (gid_t)gid;
		snprintf(u->home, sizeof u->home, "%s", f[5][0] ? f[5] : "/");
		snprintf(matched_name, sizeof matched_name, "%s", f[0]);
		matched = 1;
		break;
	}
	free(passwd);
	if (!matched) {
		if (!user_numeric) {
			snprintf(err, errcap, "unable to find user %s: no matching entries in passwd file", user_arg);
			return -1;
		}
		u->uid = (uid_t)uid_num;
	}

	if (group_arg[0] == 0 && !matched)
		return 0;
	snprintf(path, sizeof path, "%s/etc/group", root);
	char *group = slurp(path);
	int group_found = 0;
	for (char *line = group, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		char *f[4];
		if (line[0] == '#' || split_fields(line, f, 4) < 4)
			continue;
		unsigned long gid;
		if (parse_id(f[2], &gid) < 0)
			continue;
		if (group_arg[0]) {
			if (strcmp(f[0], group_arg) == 0 || strcmp(f[2], group_arg) == 0) {
				u->gid = (gid_t)gid;
				group_found = 1;
				break;
			}
		} else if (member_of(f[3], matched_name) && u->nsgids < MAX_SGIDS) {
			u->sgids[u->nsgids++] = (gid_t)gid;
		}
	}
	free(group);
	if (group_arg[0] && !group_found) {
		unsigned long gid;
		if (parse_id(group_arg, &gid) < 0) {
			snprintf(err, errcap, "unable to find group %s: no matching entries in group file", group_arg);
			return -1;
		}
		u->gid = (gid_t)gid;
	}
	return 0;
}
