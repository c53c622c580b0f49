/* test_cuda.c - the CUDA toolchain end to end: device discovery and a kernel
 * checked against the CPU.  Exits 77 (skipped) where there is no GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/cuda.h"

int
main(void)
{
	int n_dev = cuda_device_count();
	if (n_dev <= 0) {
		printf("no CUDA device: skipped\n");
		return 77;
	}
	char name[256];
	size_t total = 0, avail = 0;
	if (cuda_device_info(0, name, sizeof name, &total, &avail) != 0) {
		fprintf(stderr, "cuda_device_info failed\n");
		return 1;
	}
	printf("device 0: %s, %.1f GiB total, %.1f GiB free\n", name,
	       total / 1073741824.0, avail / 1073741824.0);

	int n = 1 << 20;
	float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
	if (!x || !y)
		return 1;
	srand(12345);
	for (int i = 0; i < n; i++) {
		x[i] = (float)rand() / RAND_MAX * 2.0f - 1.0f;
		y[i] = NAN;   /* poison: every element must be written */
	}
	char err[256] = "";
	if (cuda_selftest_axpb(x, y, n, 1.5f, -0.25f, err, sizeof err) != 0) {
		fprintf(stderr, "cuda_selftest_axpb: %s\n", err);
		return 1;
	}
	double maxdiff = 0;
	for (int i = 0; i < n; i++) {
		double d = fabs((double)y[i] - (1.5 * x[i] - 0.25));
		if (!(d <= maxdiff))
			maxdiff = isnan(d) ? INFINITY : d;
	}
	printf("axpb: largest difference vs CPU %.3g\n", maxdiff);
	free(x);
	free(y);
	return maxdiff < 1e-6 ? 0 : 1;
}
