/*
 * The record format shared by the config disk and the agent protocol: a sequence of
 *   u16 LE key length | key bytes | u32 LE value length | value bytes
 * Keys may repeat (lists keep their order). Unknown keys are skipped by readers.
 */
#ifndef HM_TLV_H
#define HM_TLV_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct tlv_reader {
	const uint8_t *p;
	size_t len, off;
};

struct tlv_rec {
	const char *key; /* not NUL-terminated */
	size_t key_len;
	const uint8_t *val;
	size_t val_len;
};

/* 1: a record was read; 0: clean end; -1: malformed (truncated record). */
int tlv_next(struct tlv_reader *r, struct tlv_rec *rec);
int tlv_key_is(const struct tlv_rec *rec, const char *key);
/* A heap copy of the value as a C string; NULL when the value holds a NUL byte. */
char *tlv_strdup(const struct tlv_rec *rec);
int tlv_u64(const struct tlv_rec *rec, uint64_t *out);
int tlv_bool(const struct tlv_rec *rec, int *out);

void tlv_put(struct buf *b, const char *key, const void *val, size_t val_len);
void tlv_put_str(struct buf *b, const char *key, const char *val);
void tlv_put_u64(struct buf *b, const char *key, uint64_t v);
void tlv_put_i64(struct buf *b, const char *key, int64_t v);

#endif
