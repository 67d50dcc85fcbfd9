/* The guest agent: exec and stat over the framed protocol on the hypeman.agent port (README.md). */
#ifndef HM_AGENT_H
#define HM_AGENT_H

#include "config.h"

#define FRAME_HEADER 9
#define FRAME_MAX_PAYLOAD (1u << 20)

enum frame_type {
	F_HELLO = 0x01,
	F_PING = 0x02,
	F_EXEC = 0x03,
	F_STDIN = 0x04,
	F_SIGNAL = 0x05,
	F_RESIZE = 0x06,
	F_STAT = 0x07,
	F_HELLO_ACK = 0x81,
	F_PONG = 0x82,
	F_STARTED = 0x83,
	F_STDOUT = 0x84,
	F_STDERR = 0x85,
	F_EXIT = 0x86,
	F_STAT_RESULT = 0x87,
	F_ERROR = 0x8f,
};

struct module_set;

/*
 * Runs in its own process (forked by init after the switch into the image's root); never returns.
 * `scsi`: the SCSI driver's modules, opened at boot and not loaded (NULL when there is nothing to
 * load): the agent loads them before its first `mount-volume`, so that a VM whose volumes are
 * never hot-plugged never spends the CPU on them.
 */
void agent_main(const char *port_dev, const struct guest_config *cfg, struct module_set *scsi) __attribute__((noreturn));

#endif
