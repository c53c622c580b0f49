// probe.cu - device discovery, a self-test kernel and the copy-bandwidth
// probe (engine thread).
#include <cstdio>
#include <cuda_runtime.h>
#include "cuda/try.cuh"

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
	CUDA_TRY(cudaMalloc(&dx, bytes));
	CUDA_TRY(cudaMalloc(&dy, bytes));
	CUDA_TRY(cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice));
	CUDA_TRY(launch_axpb(dx, dy, n, a, b, 0));
	CUDA_TRY(cudaDeviceSynchronize());
	CUDA_TRY(cudaMemcpy(y, dy, bytes, cudaMemcpyDeviceToHost));
done:
	cudaFree(dx);
	cudaFree(dy);
	return rc;
}


// Best of several timed device-to-device copies; see cuda.h.
extern "C" int cuda_copy_bandwidth(size_t bytes, double *gbps, char *err, int errlen)
{
	enum { WARMUP = 2, REPS = 10 };
	int rc = ENG_OK;
	void *src = NULL, *dst = NULL;
	cudaStream_t st = NULL;
	cudaEvent_t ev[2] = { NULL, NULL };
	float best_ms = 0;
	if (!bytes)
		bytes = (size_t)1 << 30;
	if (gbps)
		*gbps = 0;
	CUDA_TRY(cudaSetDevice(0));
	CUDA_TRY(cudaMalloc(&src, bytes));
	CUDA_TRY(cudaMalloc(&dst, bytes));
	CUDA_TRY(cudaMemset(src, 0x5a, bytes));
	CUDA_TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	CUDA_TRY(cudaEventCreate(&ev[0]));
	CUDA_TRY(cudaEventCreate(&ev[1]));
	for (int i = 0; i < WARMUP; i++)
		CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
	CUDA_TRY(cudaStreamSynchronize(st));
	for (int i = 0; i < REPS; i++) {
		float ms = 0;
		CUDA_TRY(cudaEventRecord(ev[0], st));
		CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
		CUDA_TRY(cudaEventRecord(ev[1], st));
		CUDA_TRY(cudaEventSynchronize(ev[1]));
		CUDA_TRY(cudaEventElapsedTime(&ms, ev[0], ev[1]));
		if (ms > 0 && (best_ms == 0 || ms < best_ms))
			best_ms = ms;
	}
	if (best_ms <= 0) {
		if (err && errlen > 0)
			snprintf(err, errlen, "cuda_copy_bandwidth: no copy of %zu bytes took measurable time", bytes);
		rc = ENG_ERR_DEVICE;
		goto done;
	}
	if (gbps)
		*gbps = 2.0 * (double)bytes / (best_ms * 1e-3) / 1e9;   // read + written
done:
	if (ev[0])
		cudaEventDestroy(ev[0]);
	if (ev[1])
		cudaEventDestroy(ev[1]);
	if (st)
		cudaStreamDestroy(st);
	cudaFree(src);
	cudaFree(dst);
	if (rc != ENG_OK)
		cudaGetLastError();   // clear a non-sticky error for later callers
	return rc;
}
