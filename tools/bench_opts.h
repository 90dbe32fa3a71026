/*
 * bench_opts.h — option values more than one sparq-bench mode takes, parsed in one
 * place so that the modes accept and refuse the same spellings.
 */
#ifndef SPARQ_BENCH_OPTS_H
#define SPARQ_BENCH_OPTS_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"

/*
 * --key-slice of modes kernel, gpu and trace: one format (backend.h), or "both" for
 * native then int8 on the same data in one run. out holds 2; -EINVAL for anything else.
 */
static inline int bench_parse_key_slices(const char *val, enum sparq_slice_format out[2],
					 uint32_t *n)
{
	if (strcmp(val, "both") == 0) {
		out[0] = SPARQ_SLICE_NATIVE;
		out[1] = SPARQ_SLICE_INT8;
		*n = 2;
		return 0;
	}
	if (sparq_slice_format_parse(val, &out[0]))
		return -EINVAL;
	*n = 1;
	return 0;
}

#endif
