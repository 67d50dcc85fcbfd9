#include "spawn.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "files.h"
#include "user.h"
#include "util.h"

struct spawn_error {
	int code;
	char message[580];
};

static const char *env_get(char *const *envp, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; envp && envp[i]; i++)
		if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
			return envp[i] + n + 1;
	return NULL;
}

static void lower_first(char *s)
{
	if (s[0])
		s[0] = (char)tolower((unsigned char)s[0]);
}

/* Go's exec.LookPath, which runc uses: the first PATH entry that is an executable non-directory. */
static int look_path(const char *file, const char *path, char *out, size_t cap)
{
	const char *p = path;
	for (;;) {
		const char *end = strchr(p, ':');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == 0)
			snprintf(out, cap, "./%s", file);
		else
			snprintf(out, cap, "%.*s/%s", (int)len, p, file);
		struct stat st;
		if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode) && faccessat(AT_FDCWD, out, X_OK, AT_EACCESS) == 0)
			return 0;
		if (!end)
			return -1;
		p = end + 1;
	}
}

static void child_fail(int fd, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
static void child_fail(int fd, int code, const char *fmt, ...)
{
	struct spawn_error e = {.code = code};
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e.message, sizeof e.message, fmt, ap);
	va_end(ap);
	(void)write_all(fd, &e, sizeof e);
	_exit(code);
}

static void close_from(int lowfd)
{
	if (syscall(SYS_close_range, (unsigned)lowfd, ~0u, 0) == 0)
		return;
	long max = sysconf(_SC_OPEN_MAX);
	for (long fd = lowfd; fd < (max > 0 ? max : 1024); fd++)
		close((int)fd);
}

static void child_setup(const struct spawn_opts *o, int errfd) __attribute__((noreturn));
static void child_setup(const struct spawn_opts *o, int errfd)
{
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	setsid();

	int in = o->stdin_fd, out = o->stdout_fd, err = o->stderr_fd;
	if (o->tty_fd >= 0) {
		ioctl(o->tty_fd, TIOCSCTTY, 0);
		in = out = err = o->tty_fd;
	}
	int devnull = open("/dev/null", O_RDWR);
	if (in < 0)
		in = devnull;
	if (out < 0)
		out = devnull;
	if (err < 0)
		err = devnull;
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		child_fail(errfd, 126, "cannot set up stdio: %s", strerror(errno));

	/* The agent protects itself from the OOM killer; the programs it starts must not inherit that. */
	(void)write_file("/proc/self/oom_score_adj", "0");

	struct exec_user u;
	char why[400];
	if (resolve_user("", o->user, &u, why, sizeof why) < 0)
		child_fail(errfd, 126, "cannot set user %s: %s", o->user, why);
	if (setgroups(u.nsgids, u.sgids) < 0 || setgid(u.gid) < 0 || setuid(u.uid) < 0)
		child_fail(errfd, 126, "cannot set user %s: %s", o->user, strerror(errno));

	/* docker sets HOME from passwd when the image and the caller did not. */
	size_t n = 0;
	while (o->envp && o->envp[n])
		n++;
	char **envp = calloc(n + 2, sizeof *envp);
	if (!envp)
		child_fail(errfd, 126, "out of memory");
	for (size_t i = 0; i < n; i++)
		envp[i] = o->envp[i];
	if (!env_get(o->envp, "HOME")) {
		char *home = malloc(strlen(u.home) + 6);
		if (home) {
			sprintf(home, "HOME=%s", u.home);
			envp[n++] = home;
		}
	}

	if (chdir(o->cwd) < 0) {
		snprintf(why, sizeof why, "%s", strerror(errno));
		lower_first(why);
		child_fail(errfd, 126, "cannot change to working directory \"%s\": %s", o->cwd, why);
	}

	if (o->builtin) {
		if (!builtin_known(o->builtin))
			child_fail(errfd, 127, "no built-in \"%s\"", o->builtin);
		/*
		 * Nothing is exec'd, so O_CLOEXEC closes nothing: drop every inherited descriptor (the
		 * agent's port, other sessions' pipes, the write end of our own stdin) as an execve would,
		 * or reading stdin never sees its end. The parent then reads EOF on errfd: started.
		 */
		close_from(3);
		int rc = run_builtin(o->builtin, o->argv);
		fflush(stdout);
		fflush(stderr);
		_exit(rc);
	}

	const char *file = o->argv[0];
	char resolved[4096];
	if (!strchr(file, '/')) {
		const char *path = env_get(envp, "PATH");
		if (look_path(file, path ? path : DEFAULT_PATH, resolved, sizeof resolved) < 0)
			child_fail(errfd, 127, "command not found: exec: \"%s\": executable file not found in $PATH", file);
		file = resolved;
	}
	execve(file, o->argv, envp);
	int e = errno;
	snprintf(why, sizeof why, "%s", strerror(e));
	lower_first(why);
	if (e == ENOENT)
		child_fail(errfd, 127, "command not found: exec: \"%s\": %s", o->argv[0], why);
	if (e == EACCES)
		child_fail(errfd, 126, "permission denied: exec: \"%s\": %s", o->argv[0], why);
	child_fail(errfd, 126, "cannot run program: exec: \"%s\": %s", o->argv[0], why);
}

int spawn_program(const struct spawn_opts *o, struct spawn_result *res)
{
	memset(res, 0, sizeof *res);
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0) {
		close(pipefd[0]);
		close(pipefd[1]);
		return -1;
	}
	if (pid == 0) {
		close(pipefd[0]);
		child_setup(o, pipefd[1]);
	}
	close(pipefd[1]);
	res->pid = pid;
	/* EOF means execve succeeded (the pipe closed on exec); a record means it never ran. */
	struct spawn_error e;
	size_t got = 0;
	while (got < sizeof e) {
		ssize_t n = read(pipefd[0], (char *)&e + got, sizeof e - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(pipefd[0]);
	if (got == sizeof e) {
		res->failed = 1;
		res->exit_code = e.code;
		e.message[sizeof e.message - 1] = 0;
		snprintf(res->message, sizeof res->message, "%s", e.message);
	}
	return 0;
}

void describe_exit(int status, int oom, int *code, int *signo, char *msg, size_t cap)
{
	char name[32];
	*signo = 0;
	if (WIFSIGNALED(status)) {
		*signo = WTERMSIG(status);
		*code = 128 + *signo;
		snprintf(msg, cap, "killed by signal %d (%s)%s", *signo, signal_abbrev(*signo, name, sizeof name),
			 oom ? " - OOM" : "");
	} else {
		*code = WEXITSTATUS(status);
		snprintf(msg, cap, "exited with code %d%s", *code, oom ? " - OOM" : "");
	}
}
