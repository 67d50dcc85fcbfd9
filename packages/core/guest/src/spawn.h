/* Starts a program the way `docker run`/`docker exec` do: user, working dir, PATH lookup, exit codes. */
#ifndef HM_SPAWN_H
#define HM_SPAWN_H

#include <sys/types.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct spawn_opts {
	char *const *argv;
	char *const *envp;
	const char *cwd;
	const char *user; /* docker --user spec; "" is root */
	int stdin_fd, stdout_fd, stderr_fd;
	int tty_fd; /* >= 0: the pty slave becomes the controlling terminal and all three stdio fds */
	const char *builtin; /* non-NULL: run this built-in (files.h) with argv instead of executing argv[0] */
};

struct spawn_result {
	pid_t pid;
	int failed;    /* the program never ran: exit_code and message say why */
	int exit_code; /* 127 not found, 126 not runnable, as docker */
	char message[600];
};

/* 0 when the program was started or failed to start in a way the result describes. */
int spawn_program(const struct spawn_opts *o, struct spawn_result *res);

/* "exited with code 3", "killed by signal 9 (SIGKILL)"; appends " - OOM" when oom is set. */
void describe_exit(int status, int oom, int *code, int *signo, char *msg, size_t cap);

#endif
