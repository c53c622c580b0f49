// warp.cuh - warp-wide reductions over 32 lanes (every lane gets the
// result), shared by the kernels (kernels.cu) and the GEMV (gemm.cu), whose
// in-kernel RMSNorm must sum exactly as rmsnorm_kernel does.
#ifndef BRAID_WARP_CUH
#define BRAID_WARP_CUH

static __device__ __forceinline__ float
warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

static __device__ __forceinline__ float
warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

#endif
