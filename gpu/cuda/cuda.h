/* cuda.h - the C entry points of the CUDA backend (the .cu files in gpu/cuda), callable
 * from C on the engine thread.  Every function returns an enum eng_status. */
#ifndef BRAID_CUDA_H
#define BRAID_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices (0 when there is no driver or no GPU). */
int cuda_device_count(void);

/* Name and memory of device dev; name gets at most cap bytes. */
int cuda_device_info(int dev, char *name, int cap, size_t *total_bytes, size_t *free_bytes);

/* Round-trip check of the device: upload x[n], compute y = a*x + b on the
 * GPU, download into y.  ENG_ERR_DEVICE (with the CUDA error in err) on any
 * failing call. */
int cuda_selftest_axpb(const float *x, float *y, int n, float a, float b, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
