// probe.cu - device discovery and a self-test kernel (engine thread).
#include <cstdio>
#include <cuda_runtime.h>

extern "C" {
#include "status.h"
#include "cuda/cuda.h"
}

// ---- kernel ----------------------------------------------------------------
__global__ void axpb_kernel(const float *x, float *y, int n, float a, float b)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n)
		y[i] = a * x[i] + b;
}

// ---- launcher ----------------------------------------------------------------
static cudaError_t launch_axpb(const float *x, float *y, int n, float a, float b, cudaStream_t s)
{
	int threads = 256;
	int blocks = (n + threads - 1) / threads;
	axpb_kernel<<<blocks, threads, 0, s>>>(x, y, n, a, b);
	return cudaGetLastError();
}

// ---- C entry points ------------------------------------------------------------
#define CHECK(call)                                                               \
	do {                                                                      \
		cudaError_t e_ = (call);                                          \
		if (e_ != cudaSuccess) {                                          \
			if (err && errlen > 0)                                    \
				snprintf(err, errlen, "%s: %s", #call,            \
					 cudaGetErrorString(e_));                 \
			rc = ENG_ERR_DEVICE;                                      \
			goto done;                                                \
		}                                                                 \
	} while (0)

extern "C" int cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();   // clear the sticky "no driver" error
		return 0;
	}
	return n;
}

extern "C" int cuda_device_info(int dev, char *name, int cap, size_t *total_bytes, size_t *free_bytes)
{
	cudaDeviceProp prop;
	if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
		return ENG_ERR_DEVICE;
	if (name && cap > 0)
		snprintf(name, cap, "%s", prop.name);
	if (cudaSetDevice(dev) != cudaSuccess)
		return ENG_ERR_DEVICE;
	size_t fr = 0, tot = 0;
	if (cudaMemGetInfo(&fr, &tot) != cudaSuccess)
		return ENG_ERR_DEVICE;
	if (total_bytes)
		*total_bytes = tot;
	if (free_bytes)
		*free_bytes = fr;
	return ENG_OK;
}

extern "C" int cuda_selftest_axpb(const float *x, float *y, int n, float a, float b, char *err, int errlen)
{
	int rc = ENG_OK;
	float *dx = NULL, *dy = NULL;
	size_t bytes = (size_t)n * sizeof(float);
	CHECK(cudaMalloc(&dx, bytes));
	CHECK(cudaMalloc(&dy, bytes));
	CHECK(cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice));
	CHECK(launch_axpb(dx, dy, n, a, b, 0));
	CHECK(cudaDeviceSynchronize());
	CHECK(cudaMemcpy(y, dy, bytes, cudaMemcpyDeviceToHost));
done:
	cudaFree(dx);
	cudaFree(dy);
	return rc;
}
