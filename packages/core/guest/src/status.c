#include "status.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static int status_fd = -1;

void status_open(const char *dev)
{
	if (dev)
		status_fd = open(dev, O_WRONLY | O_CLOEXEC);
}

/* Appends s as a JSON string literal; control bytes and quotes are escaped, other bytes pass through. */
static void json_str(struct buf *b, const char *s)
{
	buf_put(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[8];
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			buf_put(b, esc, 2);
		} else if (*p < 0x20 || *p == 0x7f) {
			snprintf(esc, sizeof esc, "\\u%04x", *p);
			buf_put(b, esc, 6);
		} else {
			buf_put(b, p, 1);
		}
	}
	buf_put(b, "\"", 1);
}

static void emit(struct buf *b)
{
	char tail[64];
	int n = snprintf(tail, sizeof tail, ",\"uptimeMs\":%" PRIu64 "}\n", uptime_ms());
	buf_put(b, tail, (size_t)n);
	if (status_fd < 0 || write_all(status_fd, b->p, b->len) < 0) {
		buf_put(b, "", 1);
		logmsg("status: %s", (char *)b->p);
	}
	buf_free(b);
}

static void begin(struct buf *b, const char *type)
{
	buf_put(b, "{\"type\":", 8);
	json_str(b, type);
}

static void field_str(struct buf *b, const char *key, const char *value)
{
	buf_put(b, ",", 1);
	json_str(b, key);
	buf_put(b, ":", 1);
	json_str(b, value);
}

static void field_num(struct buf *b, const char *key, int64_t value)
{
	char num[32];
	int n = snprintf(num, sizeof num, "%" PRId64, value);
	buf_put(b, ",", 1);
	json_str(b, key);
	buf_put(b, ":", 1);
	buf_put(b, num, (size_t)n);
}

void status_boot(uint64_t init_ms, uint64_t modules_ms)
{
	struct buf b = {0};
	begin(&b, "boot");
	field_str(&b, "version", HM_VERSION);
	field_num(&b, "initMs", (int64_t)init_ms);
	field_num(&b, "modulesMs", (int64_t)modules_ms);
	emit(&b);
}

void status_template(void)
{
	struct buf b = {0};
	begin(&b, "template");
	emit(&b);
}

void status_started(int pid, int64_t network_ms, int64_t egress_ms, int64_t headers_ms)
{
	struct buf b = {0};
	begin(&b, "started");
	field_num(&b, "pid", pid);
	if (network_ms >= 0)
		field_num(&b, "networkMs", network_ms);
	if (egress_ms >= 0)
		field_num(&b, "egressMs", egress_ms);
	if (headers_ms >= 0)
		field_num(&b, "headersMs", headers_ms);
	emit(&b);
}

void status_exited(int code, int signo, int oom, const char *message)
{
	struct buf b = {0};
	begin(&b, "exited");
	field_num(&b, "code", code);
	if (signo) {
		char name[32];
		field_num(&b, "signal", signo);
		field_str(&b, "signalName", signal_abbrev(signo, name, sizeof name));
	}
	buf_put(&b, oom ? ",\"oom\":true" : ",\"oom\":false", oom ? 11 : 12);
	field_str(&b, "message", message);
	emit(&b);
}

void status_error(const char *step, const char *message)
{
	struct buf b = {0};
	begin(&b, "error");
	field_str(&b, "step", step);
	field_str(&b, "message", message);
	emit(&b);
}

void status_stopping(const char *reason, uint64_t grace_ms)
{
	struct buf b = {0};
	begin(&b, "stopping");
	field_str(&b, "reason", reason);
	field_num(&b, "graceMs", (int64_t)grace_ms);
	emit(&b);
}
