/*
 * meta.h — what sparqd stores beside a parked session's records in the tier
 * manager's manifest: geometry, default parameters, label, owner and each stream's
 * length. Versioned little-endian bytes; a blob read back is validated field by field
 * (a corrupt or foreign blob is an error with a reason, never a crash or a guess).
 */
#ifndef SPARQD_META_H
#define SPARQD_META_H

#include <stdint.h>

#include "request.h"

#define SD_META_VERSION 1u

struct sd_meta {
	struct sd_geometry geo;
	struct sd_params defaults;
	uint32_t owner_uid, owner_pid;
	char label[SD_LABEL_MAX];
	uint32_t n_streams;      /* geo.n_layers * geo.n_kv_heads */
	uint32_t *lengths;       /* [n_streams], owned: sd_meta_free */
};

/* Bytes sd_meta_encode writes for n streams. */
uint32_t sd_meta_size(uint32_t n_streams);
/* Writes the blob of m into buf (sd_meta_size bytes). */
void sd_meta_encode(const struct sd_meta *m, uint8_t *buf);
/*
 * Parses and validates a blob: magic, version, sizes, geometry, parameters, label,
 * lengths. -EBADMSG with a reason for anything wrong, -ENOMEM.
 */
int sd_meta_decode(const uint8_t *buf, uint32_t len, struct sd_meta *out, const char **why);
void sd_meta_free(struct sd_meta *m);

#endif
