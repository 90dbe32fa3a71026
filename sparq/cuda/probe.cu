/*
 * probe.cu — the CUDA side of the backend registry: asks the runtime whether a
 * device answers and describes it. The CUDA backend's kernels (resident key slice,
 * GPU scoring and top-k, zero-copy gather) land here in their own issue; until then
 * the registry reports the device but cannot open a CUDA backend on it.
 */
#include <errno.h>
#include <stdio.h>

#include <cuda_runtime.h>

extern "C" int sparq_cuda_probe(char *detail, unsigned detail_len)
{
	int n = 0;
	cudaError_t err = cudaGetDeviceCount(&n);

	if (err != cudaSuccess || n == 0) {
		snprintf(detail, detail_len, "built (sm_%s), no device: %s", SPARQ_CUDA_ARCHS,
			 err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
		return -ENODEV;
	}
	cudaDeviceProp prop;
	err = cudaGetDeviceProperties(&prop, 0);
	if (err != cudaSuccess) {
		snprintf(detail, detail_len, "built, device 0 unreadable: %s",
			 cudaGetErrorString(err));
		return -ENODEV;
	}
	snprintf(detail, detail_len, "%d device(s), 0: %s sm_%d%d %.0f GiB; kernels not built yet",
		 n, prop.name, prop.major, prop.minor,
		 (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
	return -ENODEV;
}
