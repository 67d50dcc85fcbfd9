/* Resolves a docker-style user spec against the image's /etc/passwd and /etc/group. */
#ifndef HM_USER_H
#define HM_USER_H

#include <stddef.h>
#include <sys/types.h>

#define MAX_SGIDS 64

struct exec_user {
	uid_t uid;
	gid_t gid;
	gid_t sgids[MAX_SGIDS];
	size_t nsgids;
	char home[256];
};

/*
 * spec is "", "name", "uid", "name:group", "uid:gid" (any mix), as in `docker run --user`.
 * Follows runc: a name must exist in passwd; a number need not; supplementary groups come from
 * /etc/group membership only when no group was given explicitly.
 */
int resolve_user(const char *root, const char *spec, struct exec_user *u, char *err, size_t errcap);

#endif
