/*
 * probe.cu — the CUDA side of the backend registry: asks the runtime whether a
 * device answers and describes it; the backend (cuda_backend.c) opens device 0 when
 * it does.
 */
#include <errno.h>
#include <stdio.h>

#include <cuda_runtime.h>

extern "C" int sparq_cuda_probe(char *detail, unsigned detail_len)
{
	int n = 0;
	cudaError_t err = cudaGetDeviceCount(&n);

	if (err != cudaSuccess || n == 0) {
		cudaGetLastError(); /* leave no error behind for the caller's next call */
		snprintf(detail, detail_len, "built (sm_%s), no device: %s", SPARQ_CUDA_ARCHS,
			 err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
		return -ENODEV;
	}
	cudaDeviceProp prop;
	err = cudaGetDeviceProperties(&prop, 0);
	if (err != cudaSuccess) {
		cudaGetLastError();
		snprintf(detail, detail_len, "built, device 0 unreadable: %s",
			 cudaGetErrorString(err));
		return -ENODEV;
	}
	snprintf(detail, detail_len, "%d device(s), 0: %s sm_%d%d %.0f GiB; kernels sm_%s",
		 n, prop.name, prop.major, prop.minor,
		 (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), SPARQ_CUDA_ARCHS);
	return 0;
}
