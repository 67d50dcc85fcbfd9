#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "boot.h"
#include "spawn.h"
#include "tlv.h"
#include "util.h"

#define MAX_SESSIONS 64
#define TX_HIGH_WATER (1u << 20)
#define STDIN_HIGH_WATER (1u << 20)
#define DRAIN_AFTER_EXIT_MS 250
#define RECONNECT_FALLBACK_MS 5000

struct session {
	int used;
	uint32_t id;
	pid_t pid;
	int tty;
	int in_fd, out_fd, err_fd; /* with a tty, out_fd is the pty master and in_fd == out_fd */
	struct buf in_buf;
	int in_eof; /* the host closed stdin: close it once in_buf drained */
	uint64_t deadline, timeout_ms;
	int timed_out;
	int exited, status;
	uint64_t exited_at;
};

static struct {
	int port, sfd;
	int connected;
	struct buf rx, tx;
	struct session s[MAX_SESSIONS];
	const struct guest_config *cfg;
	struct module_set *scsi;
} A;

static void send_frame(uint8_t type, uint32_t id, const void *payload, size_t len)
{
	uint8_t hdr[FRAME_HEADER];
	put_le32(hdr, (uint32_t)(len + 5));
	hdr[4] = type;
	put_le32(hdr + 5, id);
	buf_put(&A.tx, hdr, sizeof hdr);
	buf_put(&A.tx, payload, len);
}

static void send_tlv(uint8_t type, uint32_t id, struct buf *b)
{
	send_frame(type, id, b->p, b->len);
	buf_free(b);
}

static void send_error(uint32_t id, const char *code, const char *message)
{
	struct buf b = {0};
	tlv_put_str(&b, "code", code);
	tlv_put_str(&b, "message", message);
	send_tlv(F_ERROR, id, &b);
}

static struct session *find_session(uint32_t id)
{
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (A.s[i].used && A.s[i].id == id)
			return &A.s[i];
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void session_close_fds(struct session *s)
{
	if (s->tty) {
		close_fd(&s->out_fd);
		s->in_fd = -1;
	} else {
		close_fd(&s->in_fd);
		close_fd(&s->out_fd);
	}
	close_fd(&s->err_fd);
}

static void session_free(struct session *s)
{
	session_close_fds(s);
	buf_free(&s->in_buf);
	memset(s, 0, sizeof *s);
	s->in_fd = s->out_fd = s->err_fd = -1;
}

/* A host that went away cannot read the output: end its sessions rather than leave them orphaned. */
static void kill_all_sessions(void)
{
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &A.s[i];
		if (!s->used)
			continue;
		if (!s->exited)
			kill(-s->pid, SIGKILL);
		session_free(s);
	}
}

static void set_async(int on)
{
	int fl = fcntl(A.port, F_GETFL);
	if (fl >= 0)
		fcntl(A.port, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC);
}

static void disconnected(void)
{
	A.connected = 0;
	A.rx.len = 0;
	A.tx.len = 0;
	kill_all_sessions();
	/* virtio_console raises SIGIO when the host side opens: wait for it instead of polling fast. */
	set_async(1);
}

/* A port whose host side is closed polls as HUP; there is no event for "host connected" besides SIGIO. */
static void probe_port(void)
{
	struct pollfd p = {.fd = A.port, .events = POLLIN};
	if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
		A.connected = 1;
		set_async(0);
	}
}

static char **merged_env(char *const *base, char **extra, size_t nextra, int tty)
{
	size_t nbase = 0;
	while (base && base[nbase])
		nbase++;
	char **env = calloc(nbase + nextra + 2, sizeof *env);
	if (!env)
		return NULL;
	size_t n = 0;
	for (size_t i = 0; i < nbase; i++) {
		size_t klen = strcspn(base[i], "=");
		int overridden = 0;
		for (size_t j = 0; j < nextra; j++)
			if (strncmp(extra[j], base[i], klen + 1) == 0)
				overridden = 1;
		if (!overridden)
			env[n++] = base[i];
	}
	int has_term = 0;
	for (size_t j = 0; j < nextra; j++) {
		env[n++] = extra[j];
		if (strncmp(extra[j], "TERM=", 5) == 0)
			has_term = 1;
	}
	for (size_t i = 0; tty && !has_term && i < n; i++)
		if (strncmp(env[i], "TERM=", 5) == 0)
			has_term = 1;
	if (tty && !has_term)
		env[n++] = "TERM=xterm";
	env[n] = NULL;
	return env;
}

static void send_exit(uint32_t id, int code, int signo, int timed_out, const char *message)
{
	struct buf b = {0};
	tlv_put_i64(&b, "code", code);
	if (signo) {
		char name[32];
		tlv_put_i64(&b, "signal", signo);
		tlv_put_str(&b, "signal_name", signal_abbrev(signo, name, sizeof name));
	}
	tlv_put_str(&b, "timed_out", timed_out ? "1" : "0");
	tlv_put_str(&b, "message", message);
	send_tlv(F_EXIT, id, &b);
}

static void handle_exec(uint32_t id, const uint8_t *p, size_t len)
{
	if (find_session(id)) {
		send_error(id, "bad_request", "stream id already in use");
		return;
	}
	struct session *s = NULL;
	for (int i = 0; i < MAX_SESSIONS && !s; i++)
		if (!A.s[i].used)
			s = &A.s[i];
	if (!s) {
		send_error(id, "too_many_sessions", "too many concurrent exec sessions");
		return;
	}

	char *argv[257] = {0}, *extra[257] = {0};
	size_t argc = 0, nextra = 0;
	char *cwd = NULL, *user = NULL, *builtin = NULL;
	int tty = 0, want_stdin = 0, bad = 0;
	uint64_t timeout_ms = 0, rows = 0, cols = 0;
	struct tlv_reader r = {.p = p, .len = len};
	struct tlv_rec rec;
	int rc;
	while ((rc = tlv_next(&r, &rec)) == 1 && !bad) {
		if (tlv_key_is(&rec, "argv"))
			bad = argc >= 256 || !(argv[argc++] = tlv_strdup(&rec));
		else if (tlv_key_is(&rec, "env"))
			bad = nextra >= 256 || !(extra[nextra] = tlv_strdup(&rec)) || !strchr(extra[nextra++], '=');
		else if (tlv_key_is(&rec, "cwd"))
			bad = cwd || !(cwd = tlv_strdup(&rec));
		else if (tlv_key_is(&rec, "user"))
			bad = user || !(user = tlv_strdup(&rec));
		else if (tlv_key_is(&rec, "builtin"))
			bad = builtin || !(builtin = tlv_strdup(&rec));
		else if (tlv_key_is(&rec, "tty"))
			bad = tlv_bool(&rec, &tty) < 0;
		else if (tlv_key_is(&rec, "stdin"))
			bad = tlv_bool(&rec, &want_stdin) < 0;
		else if (tlv_key_is(&rec, "timeout_ms"))
			bad = tlv_u64(&rec, &timeout_ms) < 0;
		else if (tlv_key_is(&rec, "rows"))
			bad = tlv_u64(&rec, &rows) < 0 || rows > 65535;
		else if (tlv_key_is(&rec, "cols"))
			bad = tlv_u64(&rec, &cols) < 0 || cols > 65535;
	}
	if (rc < 0 || bad || argc == 0 || !argv[0][0]) {
		send_error(id, "bad_request", "malformed exec request (argv is required)");
		goto out;
	}

	int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
	int master = -1, slave = -1;
	if (tty) {
		struct winsize ws = {.ws_row = (unsigned short)(rows ? rows : 24), .ws_col = (unsigned short)(cols ? cols : 80)};
		if (openpty(&master, &slave, NULL, NULL, &ws) < 0) {
			send_error(id, "exec_failed", "cannot allocate a pty");
			goto out;
		}
		fcntl(master, F_SETFD, FD_CLOEXEC);
		fcntl(slave, F_SETFD, FD_CLOEXEC);
	} else if ((want_stdin && pipe2(in_pipe, O_CLOEXEC) < 0) || pipe2(out_pipe, O_CLOEXEC) < 0 ||
		   pipe2(err_pipe, O_CLOEXEC) < 0) {
		send_error(id, "exec_failed", "cannot create pipes");
		for (int i = 0; i < 2; i++) {
			close_fd(&in_pipe[i]);
			close_fd(&out_pipe[i]);
			close_fd(&err_pipe[i]);
		}
		goto out;
	}

	if (builtin && strcmp(builtin, "mount-volume") == 0 && A.scsi && A.scsi->n > 0) {
		char err[256];
		/* Once: the set is empty afterwards (a failure shows as the disk never appearing). */
		if (modules_load(A.scsi, err, sizeof err) < 0)
			logmsg("scsi modules: %s", err);
	}
	char **env = merged_env(A.cfg->env, extra, nextra, tty);
	struct spawn_opts o = {
		.argv = argv,
		.envp = env,
		.cwd = cwd ? cwd : A.cfg->workdir,
		.user = user ? user : A.cfg->user,
		.stdin_fd = in_pipe[0],
		.stdout_fd = out_pipe[1],
		.stderr_fd = err_pipe[1],
		.tty_fd = slave,
		.builtin = builtin,
	};
	struct spawn_result res;
	int spawned = env ? spawn_program(&o, &res) : -1;
	free(env);
	close_fd(&in_pipe[0]);
	close_fd(&out_pipe[1]);
	close_fd(&err_pipe[1]);
	close_fd(&slave);
	if (spawned < 0 || res.failed) {
		close_fd(&in_pipe[1]);
		close_fd(&out_pipe[0]);
		close_fd(&err_pipe[0]);
		close_fd(&master);
		if (spawned < 0) {
			send_error(id, "exec_failed", "cannot fork");
		} else {
			waitpid(res.pid, NULL, 0);
			send_exit(id, res.exit_code, 0, 0, res.message);
		}
		goto out;
	}

	memset(s, 0, sizeof *s);
	s->used = 1;
	s->id = id;
	s->pid = res.pid;
	s->tty = tty;
	if (tty) {
		s->in_fd = s->out_fd = master;
		s->err_fd = -1;
	} else {
		s->in_fd = in_pipe[1];
		s->out_fd = out_pipe[0];
		s->err_fd = err_pipe[0];
	}
	if (s->in_fd >= 0)
		fcntl(s->in_fd, F_SETFL, fcntl(s->in_fd, F_GETFL) | O_NONBLOCK);
	fcntl(s->out_fd, F_SETFL, fcntl(s->out_fd, F_GETFL) | O_NONBLOCK);
	if (s->err_fd >= 0)
		fcntl(s->err_fd, F_SETFL, fcntl(s->err_fd, F_GETFL) | O_NONBLOCK);
	s->timeout_ms = timeout_ms;
	s->deadline = timeout_ms ? monotonic_ms() + timeout_ms : 0;

	struct buf b = {0};
	tlv_put_i64(&b, "pid", res.pid);
	send_tlv(F_STARTED, id, &b);
out:
	for (size_t i = 0; i < argc; i++)
		free(argv[i]);
	for (size_t i = 0; i < nextra; i++)
		free(extra[i]);
	free(cwd);
	free(user);
	free(builtin);
}

static void handle_stdin(uint32_t id, const uint8_t *p, size_t len)
{
	struct session *s = find_session(id);
	if (!s || s->in_eof)
		return; /* the program may have exited already: late input is dropped, not an error */
	if (len == 0) {
		s->in_eof = 1;
		if (s->tty)
			buf_put(&s->in_buf, "\x04", 1);
		return;
	}
	if (s->in_fd >= 0)
		buf_put(&s->in_buf, p, len);
}

static void handle_signal(uint32_t id, const uint8_t *p, size_t len)
{
	struct session *s = find_session(id);
	struct tlv_reader r = {.p = p, .len = len};
	struct tlv_rec rec;
	uint64_t sig = 0;
	while (tlv_next(&r, &rec) == 1)
		if (tlv_key_is(&rec, "signal") && tlv_u64(&rec, &sig) < 0)
			sig = 0;
	if (!s || s->exited || sig == 0 || sig >= NSIG)
		return;
	kill(s->pid, (int)sig);
}

static void handle_resize(uint32_t id, const uint8_t *p, size_t len)
{
	struct session *s = find_session(id);
	if (!s || !s->tty)
		return;
	struct tlv_reader r = {.p = p, .len = len};
	struct tlv_rec rec;
	uint64_t rows = 0, cols = 0;
	while (tlv_next(&r, &rec) == 1) {
		if (tlv_key_is(&rec, "rows"))
			tlv_u64(&rec, &rows);
		else if (tlv_key_is(&rec, "cols"))
			tlv_u64(&rec, &cols);
	}
	struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
	if (rows && cols && rows < 65536 && cols < 65536)
		ioctl(s->out_fd, TIOCSWINSZ, &ws);
}

/* The PathInfo of the spec: errors other than "does not exist" are reported, not thrown. */
static void handle_stat(uint32_t id, const uint8_t *p, size_t len)
{
	struct tlv_reader r = {.p = p, .len = len};
	struct tlv_rec rec;
	char *path = NULL;
	int follow = 0;
	while (tlv_next(&r, &rec) == 1) {
		if (tlv_key_is(&rec, "path") && !path)
			path = tlv_strdup(&rec);
		else if (tlv_key_is(&rec, "follow_links"))
			tlv_bool(&rec, &follow);
	}
	if (!path || !path[0]) {
		send_error(id, "bad_request", "stat needs a path");
		free(path);
		return;
	}
	struct buf b = {0};
	struct stat st;
	int rc = follow ? stat(path, &st) : lstat(path, &st);
	if (rc < 0) {
		tlv_put_str(&b, "exists", "0");
		if (errno != ENOENT && errno != ENOTDIR) {
			char why[128];
			snprintf(why, sizeof why, "%s", strerror(errno));
			why[0] = (char)(why[0] >= 'A' && why[0] <= 'Z' ? why[0] + 32 : why[0]);
			tlv_put_str(&b, "error", why);
		}
	} else {
		tlv_put_str(&b, "exists", "1");
		tlv_put_str(&b, "is_dir", S_ISDIR(st.st_mode) ? "1" : "0");
		tlv_put_str(&b, "is_file", S_ISREG(st.st_mode) ? "1" : "0");
		tlv_put_str(&b, "is_symlink", S_ISLNK(st.st_mode) ? "1" : "0");
		tlv_put_u64(&b, "mode", st.st_mode & 07777);
		tlv_put_u64(&b, "size", (uint64_t)st.st_size);
		if (S_ISLNK(st.st_mode)) {
			char target[4096];
			ssize_t n = readlink(path, target, sizeof target);
			if (n >= 0)
				tlv_put(&b, "link_target", target, (size_t)n);
		}
	}
	free(path);
	send_tlv(F_STAT_RESULT, id, &b);
}

static void handle_frame(uint8_t type, uint32_t id, const uint8_t *p, size_t len)
{
	switch (type) {
	case F_HELLO: {
		/* A new host connection: whatever the previous one started is orphaned. */
		kill_all_sessions();
		A.tx.len = 0;
		struct buf b = {0};
		struct tlv_reader r = {.p = p, .len = len};
		struct tlv_rec rec;
		while (tlv_next(&r, &rec) == 1)
			if (tlv_key_is(&rec, "nonce"))
				tlv_put(&b, "nonce", rec.val, rec.val_len);
		tlv_put_str(&b, "version", HM_VERSION);
		send_tlv(F_HELLO_ACK, id, &b);
		break;
	}
	case F_PING: {
		struct buf b = {0};
		tlv_put_str(&b, "version", HM_VERSION);
		send_tlv(F_PONG, id, &b);
		break;
	}
	case F_EXEC:
		handle_exec(id, p, len);
		break;
	case F_STDIN:
		handle_stdin(id, p, len);
		break;
	case F_SIGNAL:
		handle_signal(id, p, len);
		break;
	case F_RESIZE:
		handle_resize(id, p, len);
		break;
	case F_STAT:
		handle_stat(id, p, len);
		break;
	default:
		send_error(id, "bad_request", "unknown frame type");
	}
}

static void process_rx(void)
{
	size_t off = 0;
	while (A.rx.len - off >= FRAME_HEADER) {
		uint32_t flen = get_le32(A.rx.p + off);
		if (flen < 5 || flen - 5 > FRAME_MAX_PAYLOAD) {
			/* Out of sync: drop what we have; the host re-syncs with HELLO on its next connection. */
			send_error(0, "protocol_error", "bad frame length");
			A.rx.len = 0;
			return;
		}
		if (A.rx.len - off < 4 + (size_t)flen)
			break;
		handle_frame(A.rx.p[off + 4], get_le32(A.rx.p + off + 5), A.rx.p + off + FRAME_HEADER, flen - 5);
		off += 4 + flen;
	}
	buf_consume(&A.rx, off);
}

static void read_port(void)
{
	for (int i = 0; i < 64; i++) {
		buf_reserve(&A.rx, 65536);
		ssize_t n = read(A.port, A.rx.p + A.rx.len, 65536);
		if (n > 0) {
			A.rx.len += (size_t)n;
			continue;
		}
		if (n == 0)
			disconnected();
		else if (errno != EAGAIN && errno != EINTR)
			disconnected();
		break;
	}
	if (A.connected)
		process_rx();
}

static void flush_tx(void)
{
	while (A.tx.len > 0) {
		ssize_t n = write(A.port, A.tx.p, A.tx.len);
		if (n > 0) {
			buf_consume(&A.tx, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		disconnected();
		return;
	}
}

static size_t pending_stdin(void)
{
	size_t n = 0;
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (A.s[i].used)
			n += A.s[i].in_buf.len;
	return n;
}

/* Forwards what the program wrote: 1 = maybe more, -1 = nothing now, 0 = end of stream
 * (EOF, or EIO once a pty's slave side closed). */
static int pump_output(struct session *s, int fd, uint8_t type)
{
	uint8_t chunk[32768];
	for (int i = 0; i < 8; i++) {
		ssize_t n = read(fd, chunk, sizeof chunk);
		if (n > 0) {
			send_frame(type, s->id, chunk, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return -1;
		return 0;
	}
	return 1;
}

static void end_stream(struct session *s, int *fd)
{
	if (s->tty && fd == &s->out_fd)
		s->in_fd = -1;
	close_fd(fd);
}

/* The program exited: forward what is still buffered in its pipes (bounded), then close them. */
static void drain_streams(struct session *s)
{
	int *fds[2] = {&s->out_fd, &s->err_fd};
	uint8_t types[2] = {F_STDOUT, F_STDERR};
	for (int k = 0; k < 2; k++) {
		int rc = 1;
		for (int round = 0; *fds[k] >= 0 && rc == 1 && round < 4; round++)
			rc = pump_output(s, *fds[k], types[k]);
		if (*fds[k] >= 0)
			end_stream(s, fds[k]);
	}
}

static void pump_stdin(struct session *s)
{
	while (s->in_buf.len > 0 && s->in_fd >= 0) {
		ssize_t n = write(s->in_fd, s->in_buf.p, s->in_buf.len);
		if (n > 0) {
			buf_consume(&s->in_buf, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		s->in_buf.len = 0; /* the program closed its stdin */
		if (!s->tty)
			close_fd(&s->in_fd);
		return;
	}
	if (s->in_eof && s->in_buf.len == 0 && !s->tty)
		close_fd(&s->in_fd);
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_SESSIONS; i++) {
			struct session *s = &A.s[i];
			if (s->used && !s->exited && s->pid == pid) {
				s->exited = 1;
				s->status = status;
				s->exited_at = monotonic_ms();
			}
		}
	}
}

static void finish_sessions(uint64_t now)
{
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &A.s[i];
		if (!s->used)
			continue;
		if (!s->exited && s->deadline && now >= s->deadline && !s->timed_out) {
			s->timed_out = 1;
			kill(-s->pid, SIGKILL);
			kill(s->pid, SIGKILL);
		}
		if (!s->exited)
			continue;
		/* Output still buffered in the pipes is forwarded before the exit; a background child
		 * holding the pipes open does not hold up the exit for long. */
		int open_streams = s->out_fd >= 0 || s->err_fd >= 0;
		if (open_streams && now < s->exited_at + DRAIN_AFTER_EXIT_MS)
			continue;
		drain_streams(s);
		int code, signo;
		char msg[256];
		describe_exit(s->status, 0, &code, &signo, msg, sizeof msg);
		if (s->timed_out)
			snprintf(msg, sizeof msg, "timed out after %llu ms", (unsigned long long)s->timeout_ms);
		send_exit(s->id, code, signo, s->timed_out, msg);
		session_free(s);
	}
}

void agent_main(const char *port_dev, const struct guest_config *cfg, struct module_set *scsi)
{
	A.cfg = cfg;
	A.scsi = scsi;
	for (int i = 0; i < MAX_SESSIONS; i++)
		A.s[i].in_fd = A.s[i].out_fd = A.s[i].err_fd = -1;
	(void)write_file("/proc/self/oom_score_adj", "-1000");
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGIO);
	sigaddset(&mask, SIGPIPE);
	sigprocmask(SIG_SETMASK, &mask, NULL);
	A.sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	A.port = open(port_dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (A.port < 0 || A.sfd < 0) {
		logmsg("agent: cannot open %s: %s", port_dev, strerror(errno));
		_exit(1);
	}
	fcntl(A.port, F_SETOWN, getpid());
	disconnected();
	probe_port();

	for (;;) {
		struct pollfd pfd[2 + 2 * MAX_SESSIONS + MAX_SESSIONS];
		struct session *owner[2 + 3 * MAX_SESSIONS];
		int kind[2 + 3 * MAX_SESSIONS];
		nfds_t n = 0;
		pfd[n] = (struct pollfd){.fd = A.sfd, .events = POLLIN};
		kind[n++] = 0;
		if (A.connected) {
			short ev = 0;
			if (pending_stdin() < STDIN_HIGH_WATER)
				ev |= POLLIN;
			if (A.tx.len)
				ev |= POLLOUT;
			pfd[n] = (struct pollfd){.fd = A.port, .events = ev};
			kind[n++] = 1;
		}
		uint64_t now = monotonic_ms();
		int timeout = A.connected ? -1 : RECONNECT_FALLBACK_MS;
		for (int i = 0; i < MAX_SESSIONS; i++) {
			struct session *s = &A.s[i];
			if (!s->used)
				continue;
			if (A.tx.len < TX_HIGH_WATER) {
				if (s->out_fd >= 0) {
					pfd[n] = (struct pollfd){.fd = s->out_fd, .events = POLLIN};
					owner[n] = s;
					kind[n++] = 2;
				}
				if (s->err_fd >= 0) {
					pfd[n] = (struct pollfd){.fd = s->err_fd, .events = POLLIN};
					owner[n] = s;
					kind[n++] = 3;
				}
			}
			if (s->in_fd >= 0 && s->in_buf.len > 0 && !s->tty) {
				pfd[n] = (struct pollfd){.fd = s->in_fd, .events = POLLOUT};
				owner[n] = s;
				kind[n++] = 4;
			}
			uint64_t due = s->exited ? s->exited_at + DRAIN_AFTER_EXIT_MS : s->deadline;
			if (due) {
				int ms = due > now ? (int)(due - now) : 0;
				if (timeout < 0 || ms < timeout)
					timeout = ms;
			}
		}
		if (poll(pfd, n, timeout) < 0 && errno != EINTR)
			continue;
		for (nfds_t i = 0; i < n; i++) {
			if (!pfd[i].revents)
				continue;
			struct session *s = owner[i];
			switch (kind[i]) {
			case 0: {
				struct signalfd_siginfo si;
				int saw_io = 0;
				while (read(A.sfd, &si, sizeof si) == sizeof si)
					saw_io |= si.ssi_signo == SIGIO;
				reap();
				if (saw_io && !A.connected)
					probe_port();
				break;
			}
			case 1:
				if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					read_port();
				if (A.connected && (pfd[i].revents & POLLOUT))
					flush_tx();
				break;
			case 2:
				if (s->used && s->out_fd == pfd[i].fd && pump_output(s, s->out_fd, F_STDOUT) == 0)
					end_stream(s, &s->out_fd);
				break;
			case 3:
				if (s->used && s->err_fd == pfd[i].fd && pump_output(s, s->err_fd, F_STDERR) == 0)
					end_stream(s, &s->err_fd);
				break;
			case 4:
				if (s->used)
					pump_stdin(s);
				break;
			}
		}
		if (!A.connected) {
			probe_port();
			continue;
		}
		for (int i = 0; i < MAX_SESSIONS; i++)
			if (A.s[i].used && A.s[i].in_fd >= 0 && (A.s[i].in_buf.len || A.s[i].in_eof))
				pump_stdin(&A.s[i]);
		finish_sessions(monotonic_ms());
		flush_tx();
	}
}
