// probe.cu - device discovery, a self-test kernel and the copy-bandwidth
// probe (engine thread).
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
	CHECK(cudaSetDevice(0));
	CHECK(cudaMalloc(&src, bytes));
	CHECK(cudaMalloc(&dst, bytes));
	CHECK(cudaMemset(src, 0x5a, bytes));
	CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	CHECK(cudaEventCreate(&ev[0]));
	CHECK(cudaEventCreate(&ev[1]));
	for (int i = 0; i < WARMUP; i++)
		CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
	CHECK(cudaStreamSynchronize(st));
	for (int i = 0; i < REPS; i++) {
		float ms = 0;
		CHECK(cudaEventRecord(ev[0], st));
		CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
		CHECK(cudaEventRecord(ev[1], st));
		CHECK(cudaEventSynchronize(ev[1]));
		CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
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
