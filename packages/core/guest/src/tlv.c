#include "tlv.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tlv_next(struct tlv_reader *r, struct tlv_rec *rec)
{
	if (r->off == r->len)
		return 0;
	size_t left = r->len - r->off;
	if (left < 2)
		return -1;
	size_t klen = get_le16(r->p + r->off);
	if (left < 2 + klen + 4)
		return -1;
	size_t vlen = get_le32(r->p + r->off + 2 + klen);
	if (left - 2 - klen - 4 < vlen)
		return -1;
	rec->key = (const char *)(r->p + r->off + 2);
	rec->key_len = klen;
	rec->val = r->p + r->off + 2 + klen + 4;
	rec->val_len = vlen;
	r->off += 2 + klen + 4 + vlen;
	return 1;
}

int tlv_key_is(const struct tlv_rec *rec, const char *key)
{
	size_t n = strlen(key);
	return rec->key_len == n && memcmp(rec->key, key, n) == 0;
}

char *tlv_strdup(const struct tlv_rec *rec)
{
	if (memchr(rec->val, 0, rec->val_len))
		return NULL;
	char *s = malloc(rec->val_len + 1);
	if (!s)
		return NULL;
	memcpy(s, rec->val, rec->val_len);
	s[rec->val_len] = 0;
	return s;
}

int tlv_u64(const struct tlv_rec *rec, uint64_t *out)
{
	return parse_u64((const char *)rec->val, rec->val_len, out);
}

int tlv_bool(const struct tlv_rec *rec, int *out)
{
	if (rec->val_len != 1 || (rec->val[0] != '0' && rec->val[0] != '1'))
		return -1;
	*out = rec->val[0] == '1';
	return 0;
}

void tlv_put(struct buf *b, const char *key, const void *val, size_t val_len)
{
	uint8_t hdr[6];
	size_t klen = strlen(key);
	put_le16(hdr, (uint16_t)klen);
	buf_put(b, hdr, 2);
	buf_put(b, key, klen);
	put_le32(hdr, (uint32_t)val_len);
	buf_put(b, hdr, 4);
	buf_put(b, val, val_len);
}

void tlv_put_str(struct buf *b, const char *key, const char *val) { tlv_put(b, key, val, strlen(val)); }

void tlv_put_u64(struct buf *b, const char *key, uint64_t v)
{
	char s[24];
	snprintf(s, sizeof s, "%" PRIu64, v);
	tlv_put_str(b, key, s);
}

void tlv_put_i64(struct buf *b, const char *key, int64_t v)
{
	char s[24];
	snprintf(s, sizeof s, "%" PRId64, v);
	tlv_put_str(b, key, s);
}
