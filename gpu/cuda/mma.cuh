// mma.cuh - the bf16 tensor-core product the GEMV (gemm.cu) and the
// attention units (kernels.cu) are built on.
#ifndef BRAID_MMA_CUH
#define BRAID_MMA_CUH

#include <cstdint>

// d(16x8) += A(16x16, row-major, regs a0..a3) . B(16x8, col-major, b0..b1),
// bf16 in, f32 accumulate.
static __device__ __forceinline__ void
mma_bf16(float *d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		     "{%0,%1,%2,%3};"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The same with A's four registers from an array (a fragment ldmatrix filled).
static __device__ __forceinline__ void
mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
	mma_bf16(d, a[0], a[1], a[2], a[3], b0, b1);
}

#endif
