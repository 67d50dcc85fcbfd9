/* Small helpers shared by every part of the guest init. */
#ifndef HM_UTIL_H
#define HM_UTIL_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

/* The boot steps' error convention: the message into the caller's `err` (`cap` bytes), then -1. */
#define FAIL(...)                                \
	do {                                         \
		snprintf(err, cap, __VA_ARGS__);         \
		return -1;                               \
	} while (0)

#define HM_VERSION "1"

/* Diagnostics go to the kernel console (the VMM's console log), never to the app log. */
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reads a small text file into buf (NUL-terminated, trailing newlines stripped); -1 on error. */
ssize_t read_small_file(const char *path, char *buf, size_t cap);
int write_all(int fd, const void *buf, size_t len);
/* Reads until len bytes, end of file or an error (EINTR retried); returns how many it got. */
size_t read_upto(int fd, void *buf, size_t len);
int write_file(const char *path, const char *text);
int mkdir_p(const char *path, mode_t mode);
uint64_t uptime_ms(void);
uint64_t monotonic_ms(void);
void sleep_ms(unsigned ms); /* restarts after signals */
uint32_t crc32_ieee(const uint8_t *p, size_t len);

/* Strict decimal parse of len bytes (no sign, no spaces, no overflow). */
int parse_u64(const char *s, size_t len, uint64_t *out);

/* "SIGKILL" for 9; "SIG?" for unknown numbers. */
const char *signal_abbrev(int sig, char *scratch, size_t cap);

/* /dev/vdX of the virtio disk whose serial is `serial`; 0 when found. Waits up to wait_ms. */
int find_disk_by_serial(const char *serial, char *dev, size_t cap, unsigned wait_ms);
/* A virtio device of this type (sysfs `device`, e.g. "0x0008" for SCSI) is on the bus (its transport driver loaded). */
int virtio_device_present(const char *id);
/* /dev/vportNpM of the virtio-serial port named `name`; 0 when found. Waits up to wait_ms. */
int find_virtio_port(const char *name, char *dev, size_t cap, unsigned wait_ms);

/* A growable byte buffer; allocation failure aborts (PID 1 cannot do anything better). */
struct buf {
	uint8_t *p;
	size_t len, cap;
};
void buf_reserve(struct buf *b, size_t extra);
void buf_put(struct buf *b, const void *data, size_t len);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);

void put_le16(uint8_t *p, uint16_t v);
void put_le32(uint8_t *p, uint32_t v);
uint16_t get_le16(const uint8_t *p);
uint32_t get_le32(const uint8_t *p);

#endif
