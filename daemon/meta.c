/*
 * meta.c — the parked-session blob (meta.h). Fixed little-endian layout:
 *   "SPQDMETA" magic, u32 version, u32 header bytes,
 *   geometry 5 × u32, params r, k, l (i32), ratio (f32 bits), blend, dense (u32 each),
 *   owner uid, pid, label 64 bytes NUL-padded, u32 n_streams, then n_streams × u32.
 * The tier manager checksums the manifest that carries it; this file checks meaning.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "meta.h"

#define MAGIC "SPQDMETA"
#define HEAD_WORDS 17u   /* u32 fields between the magic+version+bytes and the label */
#define FIXED (8u + 4u + 4u + HEAD_WORDS * 4u + SD_LABEL_MAX + 4u)

uint32_t sd_meta_size(uint32_t n_streams)
{
	return FIXED + n_streams * 4u;
}

static void put32(uint8_t **p, uint32_t x)
{
	for (int i = 0; i < 4; i++)
		(*p)[i] = (uint8_t)(x >> (8 * i));
	*p += 4;
}

static uint32_t get32(const uint8_t **p)
{
	uint32_t x = 0;

	for (int i = 0; i < 4; i++)
		x |= (uint32_t)(*p)[i] << (8 * i);
	*p += 4;
	return x;
}

void sd_meta_encode(const struct sd_meta *m, uint8_t *buf)
{
	uint8_t *p = buf;
	uint32_t ratio;

	memcpy(p, MAGIC, 8);
	p += 8;
	put32(&p, SD_META_VERSION);
	put32(&p, FIXED);
	put32(&p, m->geo.n_layers);
	put32(&p, m->geo.n_q_heads);
	put32(&p, m->geo.n_kv_heads);
	put32(&p, m->geo.head_dim);
	put32(&p, (uint32_t)m->geo.dtype);
	put32(&p, m->defaults.p.r);
	put32(&p, m->defaults.p.k);
	put32(&p, (uint32_t)m->defaults.p.l);
	memcpy(&ratio, &m->defaults.p.ratio, 4);
	put32(&p, ratio);
	put32(&p, (uint32_t)m->defaults.p.blend);
	put32(&p, m->defaults.dense);
	put32(&p, m->owner_uid);
	put32(&p, m->owner_pid);
	put32(&p, 0);  /* reserved */
	put32(&p, 0);
	put32(&p, 0);
	put32(&p, 0);
	memset(p, 0, SD_LABEL_MAX);
	memcpy(p, m->label, strnlen(m->label, SD_LABEL_MAX - 1));
	p += SD_LABEL_MAX;
	put32(&p, m->n_streams);
	for (uint32_t i = 0; i < m->n_streams; i++)
		put32(&p, m->lengths[i]);
}

int sd_meta_decode(const uint8_t *buf, uint32_t len, struct sd_meta *out, const char **why)
{
	const uint8_t *p = buf;
	uint32_t ratio, words[HEAD_WORDS];
	const char *pwhy = "";

	memset(out, 0, sizeof(*out));
	*why = "session metadata is truncated";
	if (len < FIXED)
		return -EBADMSG;
	*why = "session metadata has no sparqd magic";
	if (memcmp(p, MAGIC, 8) != 0)
		return -EBADMSG;
	p += 8;
	*why = "session metadata has an unknown version";
	if (get32(&p) != SD_META_VERSION)
		return -EBADMSG;
	*why = "session metadata has a bad header size";
	if (get32(&p) != FIXED)
		return -EBADMSG;
	for (unsigned i = 0; i < HEAD_WORDS; i++)
		words[i] = get32(&p);
	out->geo = (struct sd_geometry){ words[0], words[1], words[2], words[3],
					 (enum sparq_dtype)words[4] };
	out->defaults.p.r = words[5];
	out->defaults.p.k = words[6];
	out->defaults.p.l = (int32_t)words[7];
	ratio = words[8];
	memcpy(&out->defaults.p.ratio, &ratio, 4);
	out->defaults.p.blend = (enum sparq_blend)words[9];
	out->defaults.dense = words[10] != 0;
	out->owner_uid = words[11];
	out->owner_pid = words[12];
	*why = "session metadata has a bad geometry";
	if (words[4] != SPARQ_DTYPE_F16 && words[4] != SPARQ_DTYPE_BF16)
		return -EBADMSG;
	if (out->geo.n_layers == 0 || out->geo.n_layers > SD_LAYERS_MAX ||
	    out->geo.n_kv_heads == 0 || out->geo.n_kv_heads > SD_KV_HEADS_MAX ||
	    (uint64_t)out->geo.n_layers * out->geo.n_kv_heads > SD_STREAMS_MAX ||
	    out->geo.n_q_heads == 0 || out->geo.n_q_heads % out->geo.n_kv_heads ||
	    sparq_geometry_check(out->geo.head_dim, out->geo.n_q_heads / out->geo.n_kv_heads,
				 out->geo.dtype, &pwhy))
		return -EBADMSG;
	*why = "session metadata has bad default parameters";
	if (words[10] > 1 || !isfinite(out->defaults.p.ratio) ||
	    sd_params_check(&out->defaults, out->geo.head_dim,
			    out->geo.n_q_heads / out->geo.n_kv_heads, &pwhy))
		return -EBADMSG;
	*why = "session metadata has an unterminated label";
	if (memchr(p, 0, SD_LABEL_MAX) == NULL)
		return -EBADMSG;
	memcpy(out->label, p, SD_LABEL_MAX);
	p += SD_LABEL_MAX;
	out->n_streams = get32(&p);
	*why = "session metadata's stream count does not match its geometry";
	if (out->n_streams != out->geo.n_layers * out->geo.n_kv_heads ||
	    len != sd_meta_size(out->n_streams))
		return -EBADMSG;
	out->lengths = malloc((size_t)out->n_streams * 4);
	*why = "out of memory";
	if (!out->lengths)
		return -ENOMEM;
	for (uint32_t i = 0; i < out->n_streams; i++) {
		out->lengths[i] = get32(&p);
		if (out->lengths[i] == 0 || out->lengths[i] > SPARQ_POS_MAX) {
			*why = "session metadata has a stream length out of range";
			sd_meta_free(out);
			return -EBADMSG;
		}
	}
	*why = "";
	return 0;
}

void sd_meta_free(struct sd_meta *m)
{
	free(m->lengths);
	m->lengths = NULL;
}
