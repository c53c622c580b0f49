// pdl.cuh - programmatic dependent launch (Hopper): a kernel launched with
// k_launch may be scheduled while the kernel before it on the stream is still
// running, so the launch latency between the many small kernels of a decode
// step overlaps with work.  Such a kernel calls k_pdl_start() before it
// touches memory: it lets the next kernel be scheduled, then waits until the
// previous one has finished and its writes are visible, so every kernel still
// sees its inputs complete and nothing it writes is still being read.
// BRAID_PDL=0 launches everything plainly (for comparisons).  Engine thread.
#ifndef BRAID_PDL_CUH
#define BRAID_PDL_CUH

#include <cstdlib>
#include <utility>
#include <cuda_runtime.h>

// Let the next kernel on the stream be scheduled (it waits in its own
// k_pdl_wait until this one has finished).
__device__ __forceinline__ void
k_pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Wait until the previous kernel has finished and its writes are visible
// (returns at once for a kernel launched plainly).
__device__ __forceinline__ void
k_pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void
k_pdl_start()
{
	k_pdl_trigger();
	k_pdl_wait();
}

// 1 unless BRAID_PDL=0 (read once).
static inline int
k_pdl_on()
{
	static const int on = [] {
		const char *v = std::getenv("BRAID_PDL");
		return !v || std::atoi(v) != 0;
	}();
	return on;
}

// kern<<<grid, block, smem, s>>>(args...), allowed to overlap the previous
// kernel on s (the kernel must begin with k_pdl_start()).
template <typename... P, typename... A>
static inline cudaError_t
k_launch(void (*kern)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A &&...args)
{
	cudaLaunchAttribute at[1];
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = s;
	cfg.attrs = at;
	cfg.numAttrs = k_pdl_on() ? 1 : 0;
	return cudaLaunchKernelEx(&cfg, kern, std::forward<A>(args)...);
}

#endif
