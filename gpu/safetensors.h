/* safetensors.h - mmapped HF safetensors files, single or sharded (st_).
 * Loaded once on the engine thread; read-only afterwards, so any thread may
 * look tensors up. */
#ifndef BRAID_SAFETENSORS_H
#define BRAID_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

enum st_dtype {
	ST_F32 = 0,
	ST_F16 = 1,
	ST_BF16 = 2,
};

/* Bytes per element of a dtype. */
size_t st_dtype_size(enum st_dtype dt);
/* "F32", "F16", "BF16". */
const char *st_dtype_name(enum st_dtype dt);

#define ST_MAX_DIMS 4

struct st_tensor {
	const char *name;         /* owned by the set                          */
	enum st_dtype dtype;
	int ndim;                 /* 0..ST_MAX_DIMS                            */
	int64_t shape[ST_MAX_DIMS];
	int64_t numel;            /* product of shape (1 for a scalar)         */
	const void *data;         /* into the mmapped file; lives with the set */
	size_t nbytes;
	const char *file;         /* path of the file holding it (owned)       */
};

typedef struct st_set st_set;

/* Open a model directory: model.safetensors, or the shards listed in
 * model.safetensors.index.json.  Every file is mmapped read-only, its header
 * fully validated (JSON, offsets inside the file, dtype known, byte counts
 * equal to shape*dtype, no overlap, no duplicate names).  Returns NULL and
 * fills err ("PATH: problem") on failure. */
st_set *st_open_dir(const char *dir, char *err, size_t errlen);

/* Open one .safetensors file (same validation). */
st_set *st_open_file(const char *path, char *err, size_t errlen);

/* Unmap and free; NULL is fine. */
void st_close(st_set *set);

/* The tensor with this name, or NULL.  The pointer lives as long as set. */
const struct st_tensor *st_find(const st_set *set, const char *name);

/* Number of tensors, and the i-th one (0 <= i < st_count). */
size_t st_count(const st_set *set);
const struct st_tensor *st_at(const st_set *set, size_t i);

/* Element conversion helpers used by every CPU kernel and loader. */
static inline float
st_bf16_to_f32(uint16_t h)
{
	union { uint32_t u; float f; } v;
	v.u = (uint32_t)h << 16;
	return v.f;
}

float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);   /* round to nearest even */
uint16_t st_f32_to_f16(float f);    /* round to nearest even */

/* Read element i of a tensor-like buffer of the given dtype as float. */
static inline float
st_load(const void *data, enum st_dtype dt, size_t i)
{
	switch (dt) {
	case ST_F32: return ((const float *)data)[i];
	case ST_BF16: return st_bf16_to_f32(((const uint16_t *)data)[i]);
	case ST_F16: return st_f16_to_f32(((const uint16_t *)data)[i]);
	}
	return 0.0f;
}

#endif
