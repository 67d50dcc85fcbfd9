/* JSON-lines events on the hypeman.status port: how the host learns what init and the program did. */
#ifndef HM_STATUS_H
#define HM_STATUS_H

#include <stdint.h>

void status_open(const char *dev); /* NULL or a failed open sends events to the console */
/* init_ms: uptime when init began; modules_ms: time spent loading modules. */
void status_boot(uint64_t init_ms, uint64_t modules_ms);
/* network_ms, egress_ms: time spent on each at boot, or -1 when not configured (left out). */
/* A template boot is ready to be snapshotted: it waits for `go` on the control port. */
void status_template(void);
void status_started(int pid, int64_t network_ms, int64_t egress_ms, int64_t headers_ms);
void status_exited(int code, int signo, int oom, const char *message);
void status_error(const char *step, const char *message);
void status_stopping(const char *reason, uint64_t grace_ms);

#endif
