/*
 * helpers.h — shared pieces of the test programs (liburing test/helpers.h style):
 * exit codes CTest understands, a seeded generator, and builders for streams filled
 * with known data. Each test is one program: exit 0 pass, 1 fail, 77 skip.
 */
#ifndef SPARQ_TEST_HELPERS_H
#define SPARQ_TEST_HELPERS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "half.h"
#include "sparq.h"
#include "store.h"
#include "stream.h"

#define T_EXIT_PASS 0
#define T_EXIT_FAIL 1
#define T_EXIT_SKIP 77

#define T_CHECK(cond, ...)                                                        \
	do {                                                                      \
		if (!(cond)) {                                                    \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__,    \
				__LINE__, #cond);                                 \
			fprintf(stderr, __VA_ARGS__);                             \
			fputc('\n', stderr);                                      \
			exit(T_EXIT_FAIL);                                        \
		}                                                                 \
	} while (0)

/* splitmix64: small, seedable, identical everywhere. */
struct t_rng {
	uint64_t s;
};

static inline uint64_t t_next(struct t_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline double t_uniform(struct t_rng *r)
{
	return (double)(t_next(r) >> 11) * 0x1p-53;
}

static inline double t_normal(struct t_rng *r)
{
	double u = t_uniform(r), v = t_uniform(r);
	return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static inline uint16_t t_to_dtype(float x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f32_to_f16(x) : sparq_f32_to_bf16(x);
}

static inline double t_from_dtype(uint16_t x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f16_to_f32(x) : sparq_bf16_to_f32(x);
}

static inline void *t_alloc(size_t bytes)
{
	void *p = calloc(1, bytes ? bytes : 1);
	if (!p) {
		fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
		exit(T_EXIT_FAIL);
	}
	return p;
}

/* Opens the named backend or exits 77 (skip) when it is not available here. */
static inline struct sparq_backend *t_backend_or_skip(const char *name,
						      const struct sparq_backend_config *cfg)
{
	struct sparq_backend *be;
	int ret = sparq_backend_open(name, cfg, &be);

	if (ret) {
		printf("SKIP: backend %s not available (%d)\n", name, ret);
		exit(T_EXIT_SKIP);
	}
	return be;
}

#endif
