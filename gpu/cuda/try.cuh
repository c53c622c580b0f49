// try.cuh - CUDA_TRY, the error convention of the .cu entry points that
// report through (err, errlen): on a failing CUDA call, write "call: CUDA
// error" to err, set rc = ENG_ERR_DEVICE and jump to the function's `done`
// label (which frees what was allocated).  Engine thread.
#ifndef BRAID_TRY_CUH
#define BRAID_TRY_CUH

#include <cstdio>
#include <cuda_runtime.h>

#define CUDA_TRY(call)                                                            \
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

#endif
