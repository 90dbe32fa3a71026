/*
 * cuda_none.c — the registry's answer in a build without CUDA (SPARQ_CUDA=OFF or no
 * nvcc found): the backend exists in the design but not in this binary.
 */
#include <errno.h>
#include <stdio.h>

#include "backend-impl.h"

int sparq_cuda_probe(char *detail, unsigned detail_len)
{
	snprintf(detail, detail_len, "not built (configure with nvcc and -DSPARQ_CUDA=ON)");
	return -ENODEV;
}

int sparq_cuda_backend_create(const struct sparq_backend_config *cfg, struct sparq_backend **out)
{
	(void)cfg;
	(void)out;
	return -ENODEV;
}
