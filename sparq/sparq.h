/*
 * sparq.h — the SparQ core's public vocabulary: storage dtypes, hyper-parameters
 * and their resolution (explicit r/k/l or a compression ratio, SPARQ.md "Choosing
 * r and k"). Everything else in sparq/ (streams, stores, backends) speaks these types.
 *
 * Conventions: functions return 0 or a negative errno code; where a caller needs a
 * reason, an optional `const char **why` receives a static string (never freed).
 */
#ifndef SPARQ_SPARQ_H
#define SPARQ_SPARQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPARQ_VERSION_STRING "0.1.0"

/* Head dimensions the SIMD paths handle: multiples of 8 up to 1024. */
#define SPARQ_HEAD_DIM_MAX 1024u
/* Query heads that may share one KV head (GQA group size). */
#define SPARQ_GROUP_MAX 64u
/* Positions per stream: selections are uint32 indices. */
#define SPARQ_POS_MAX (1u << 31)
/* Fixed-k floor of the ratio recipe. */
#define SPARQ_K_MIN 128u

enum sparq_dtype {
	SPARQ_DTYPE_F16 = 1,
	SPARQ_DTYPE_BF16 = 2,
};

enum sparq_blend {
	SPARQ_BLEND_AUTO = 0, /* on for g = 1 (MHA), off for g > 1 (GQA) */
	SPARQ_BLEND_ON = 1,
	SPARQ_BLEND_OFF = 2,
};

/* Hyper-parameters as a caller states them. */
struct sparq_params {
	uint32_t r;     /* query components kept; 0 = from ratio */
	uint32_t k;     /* rows fetched; 0 = from ratio */
	int32_t l;      /* recent positions always selected besides the current one; -1 = k/4 */
	float ratio;    /* c >= 1 for a target transfer of 1/c; 0 = explicit r and k only */
	enum sparq_blend blend;
};

/* Hyper-parameters fixed for one stream length S. */
struct sparq_resolved {
	uint32_t r, k, l;
	bool blend;
};

/* Bytes of one element of a storage dtype, 0 for an unknown dtype. */
size_t sparq_dtype_size(enum sparq_dtype dt);
const char *sparq_dtype_name(enum sparq_dtype dt);

/*
 * Checks head geometry: d a multiple of 8 in [8, SPARQ_HEAD_DIM_MAX], dtype known,
 * 1 <= g <= SPARQ_GROUP_MAX. Returns -EINVAL with a reason otherwise.
 */
int sparq_geometry_check(uint32_t d, uint32_t g, enum sparq_dtype dt, const char **why);

/*
 * Resolves p for head dimension d, group size g and S positions. With a ratio c:
 * r = round(d/c) (at least 1), k = max(128, round(S/(2c))); explicit r or k win.
 * l = k/4 unless given. Returns -EINVAL (with a reason) for r = 0 or r > d, k = 0,
 * l >= k, a ratio below 1 or not finite, or an unknown blend mode.
 */
int sparq_params_resolve(const struct sparq_params *p, uint32_t d, uint32_t g,
			 uint64_t S, struct sparq_resolved *out, const char **why);

/*
 * Elements moved per KV head per decode step (SPARQ.md "Choosing r and k"):
 * dense 2·S·d + 2·d, SparQ S·r + 2·k·d + 4·d (k capped at S).
 */
double sparq_transfer_dense(uint64_t S, uint32_t d);
double sparq_transfer_sparq(uint64_t S, uint32_t d, uint32_t r, uint32_t k);

#endif
