/* safetensors.c - mmap and validate HF safetensors files, single or sharded,
 * and the f16/bf16 conversions.  Opened on the engine thread; read-only after. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "status.h"

/* HF refuses headers past 100 MB; so do we (a guard against absurd N). */
#define ST_MAX_HEADER ((uint64_t)100 << 20)

struct st_file {
	char *path;          /* owned                                 */
	void *map;           /* whole file, PROT_READ, MAP_PRIVATE     */
	size_t size;
};

struct st_set {
	struct st_file *files;
	size_t n_files, cap_files;
	struct st_tensor *tensors;   /* [n]                                  */
	size_t n, cap;
	size_t *by_name;             /* [n] indices sorted by name (st_find) */
	void **copies;               /* aligned copies of misaligned tensors */
	size_t n_copies, cap_copies;
};

/* ---- dtypes -------------------------------------------------------------- */

static const struct {
	const char *name;
	enum st_dtype dt;
	int supported;
} st_dtype_table[] = {
	{ "F32", ST_F32, 1 },
	{ "F16", ST_F16, 1 },
	{ "BF16", ST_BF16, 1 },
	/* Valid safetensors dtypes that braid does not compute with. */
	{ "F64", 0, 0 }, { "I64", 0, 0 }, { "I32", 0, 0 }, { "I16", 0, 0 },
	{ "I8", 0, 0 }, { "U64", 0, 0 }, { "U32", 0, 0 }, { "U16", 0, 0 },
	{ "U8", 0, 0 }, { "BOOL", 0, 0 }, { "F8_E4M3", 0, 0 },
	{ "F8_E5M2", 0, 0 }, { "F8_E8M0", 0, 0 }, { "E8M0", 0, 0 },
	{ "F6_E2M3", 0, 0 }, { "F6_E3M2", 0, 0 }, { "F4", 0, 0 },
	{ "C64", 0, 0 },
};

size_t
st_dtype_size(enum st_dtype dt)
{
	switch (dt) {
	case ST_F32: return 4;
	case ST_F16: return 2;
	case ST_BF16: return 2;
	}
	return 0;
}

const char *
st_dtype_name(enum st_dtype dt)
{
	switch (dt) {
	case ST_F32: return "F32";
	case ST_F16: return "F16";
	case ST_BF16: return "BF16";
	}
	return "?";
}

/* ---- conversions --------------------------------------------------------- */

static float
bits_to_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

static uint32_t
f32_to_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	return u;
}

float
st_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t mant = h & 0x3ff;

	if (exp == 0x1f)                        /* inf, or NaN keeping payload */
		return bits_to_f32(sign | 0x7f800000u | (mant << 13));
	if (exp != 0)                           /* normal */
		return bits_to_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
	if (mant == 0)
		return bits_to_f32(sign);
	/* Subnormal: mant * 2^-24.  Shift the leading one up to bit 10. */
	int e = 127 - 15 + 1;
	while (!(mant & 0x400)) {
		mant <<= 1;
		e--;
	}
	mant &= 0x3ff;
	return bits_to_f32(sign | ((uint32_t)e << 23) | (mant << 13));
}

uint16_t
st_f32_to_bf16(float f)
{
	uint32_t u = f32_to_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)    /* NaN: keep sign, force quiet */
		return (uint16_t)((u >> 16) | 0x40);
	/* Round to nearest even; a carry into the exponent is correct, and
	 * rounding past the largest finite value gives inf. */
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

uint16_t
st_f32_to_f16(float f)
{
	uint32_t u = f32_to_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t exp = (u >> 23) & 0xff;
	uint32_t mant = u & 0x7fffff;

	if (exp == 0xff)                        /* inf, or NaN (kept quiet) */
		return sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0);
	int e = (int)exp - 127;
	if (e > 15)                             /* >= 65536: overflow */
		return sign | 0x7c00;
	if (e >= -14) {                         /* normal half */
		uint32_t h = ((uint32_t)(e + 15) << 10) | (mant >> 13);
		uint32_t rem = mant & 0x1fff;
		if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
			h++;                    /* may carry up to inf: right */
		return sign | (uint16_t)h;
	}
	if (e < -25)                            /* below half the smallest subnormal */
		return sign;
	/* Subnormal half: value = m * 2^(e-23) = h * 2^-24, h = m >> shift. */
	uint32_t m = mant | 0x800000;
	int shift = -e - 1;                     /* 14..24 */
	uint32_t h = m >> shift;
	uint32_t rem = m & ((1u << shift) - 1);
	uint32_t half = 1u << (shift - 1);
	if (rem > half || (rem == half && (h & 1)))
		h++;                            /* 0x400 is the smallest normal */
	return sign | (uint16_t)h;
}

/* ---- the set ------------------------------------------------------------- */

/* Grow the array whose pointer is at arrp (any object pointer type: read
 * and written with memcpy, so no type punning) to hold need elements. */
static int
grow(void *arrp, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap * 2 : 16;
	while (ncap < need)
		ncap *= 2;
	void *arr;
	memcpy(&arr, arrp, sizeof arr);
	void *p = realloc(arr, ncap * elem);
	if (!p)
		return -1;
	memcpy(arrp, &p, sizeof p);
	*cap = ncap;
	return 0;
}

void
st_close(st_set *set)
{
	if (!set)
		return;
	for (size_t i = 0; i < set->n; i++)
		free((char *)set->tensors[i].name);
	for (size_t i = 0; i < set->n_copies; i++)
		free(set->copies[i]);
	for (size_t i = 0; i < set->n_files; i++) {
		if (set->files[i].map)
			munmap(set->files[i].map, set->files[i].size);
		free(set->files[i].path);
	}
	free(set->files);
	free(set->tensors);
	free(set->by_name);
	free(set->copies);
	free(set);
}

size_t
st_count(const st_set *set)
{
	return set ? set->n : 0;
}

const struct st_tensor *
st_at(const st_set *set, size_t i)
{
	if (!set || i >= set->n)
		return NULL;
	return &set->tensors[i];
}

const struct st_tensor *
st_find(const st_set *set, const char *name)
{
	if (!set || !name || !set->by_name)
		return NULL;
	size_t lo = 0, hi = set->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct st_tensor *t = &set->tensors[set->by_name[mid]];
		int c = strcmp(name, t->name);
		if (c == 0)
			return t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* qsort has no context argument, so the name index is built by sorting
 * pointers to tensors and converting them back to indices. */
static int
cmp_tensor_name(const void *a, const void *b)
{
	const struct st_tensor *ta = *(const struct st_tensor *const *)a;
	const struct st_tensor *tb = *(const struct st_tensor *const *)b;
	return strcmp(ta->name, tb->name);
}

/* Per-file: sort this file's tensors by offset to find overlaps. */
struct span {
	uint64_t begin, end;
	const char *name;
};

static int
cmp_span(const void *a, const void *b)
{
	const struct span *sa = a, *sb = b;
	if (sa->begin != sb->begin)
		return sa->begin < sb->begin ? -1 : 1;
	if (sa->end != sb->end)
		return sa->end < sb->end ? -1 : 1;
	return 0;
}

/* A JSON value as a non-negative integer (jansson integers are signed). */
static int
json_u64(const json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* Validate one header entry and append it to set (data not yet placed). */
static int
st_add_entry(st_set *set, const char *path, const char *name, json_t *entry,
	     const struct st_file *f, uint64_t data_start, uint64_t data_len,
	     char *err, size_t errlen)
{
	if (!json_is_object(entry))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: entry is not an object", path, name);

	json_t *jd = json_object_get(entry, "dtype");
	if (!json_is_string(jd))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: \"dtype\" missing or not a string", path, name);
	const char *ds = json_string_value(jd);
	int found = -1;
	for (size_t i = 0; i < sizeof st_dtype_table / sizeof st_dtype_table[0]; i++)
		if (strcmp(ds, st_dtype_table[i].name) == 0)
			found = (int)i;
	if (found < 0)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: unknown dtype \"%s\"", path, name, ds);
	if (!st_dtype_table[found].supported)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: tensor %s: dtype %s is not supported (F32, F16, BF16 only)",
				  path, name, ds);
	enum st_dtype dt = st_dtype_table[found].dt;
	uint64_t esize = st_dtype_size(dt);

	json_t *js = json_object_get(entry, "shape");
	if (!json_is_array(js))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: \"shape\" missing or not an array", path, name);
	size_t ndim = json_array_size(js);
	if (ndim > ST_MAX_DIMS)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: tensor %s: %zu dimensions (at most %d)",
				  path, name, ndim, ST_MAX_DIMS);
	int64_t shape[ST_MAX_DIMS] = { 0 };
	uint64_t numel = 1;
	/* Any tensor must fit in the data region, so numel*esize <= data_len
	 * bounds every dimension and keeps the products from overflowing. */
	uint64_t max_numel = data_len / esize;
	for (size_t d = 0; d < ndim; d++) {
		uint64_t dim;
		if (json_u64(json_array_get(js, d), &dim) < 0)
			return eng_seterr(err, errlen, ENG_ERR_FORMAT,
					  "%s: tensor %s: shape[%zu] is not a non-negative integer",
					  path, name, d);
		shape[d] = (int64_t)dim;
		if (numel != 0 && dim != 0 && dim > max_numel / numel)
			return eng_seterr(err, errlen, ENG_ERR_FORMAT,
					  "%s: tensor %s: shape[%zu] = %llu makes the tensor larger "
					  "than the file's data (%llu bytes)", path, name, d,
					  (unsigned long long)dim, (unsigned long long)data_len);
		numel *= dim;
	}

	json_t *jo = json_object_get(entry, "data_offsets");
	uint64_t begin, end;
	if (!json_is_array(jo) || json_array_size(jo) != 2 ||
	    json_u64(json_array_get(jo, 0), &begin) < 0 ||
	    json_u64(json_array_get(jo, 1), &end) < 0)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: \"data_offsets\" must be [begin, end] "
				  "non-negative integers", path, name);
	if (begin > end)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: data_offsets [%llu, %llu] out of order",
				  path, name, (unsigned long long)begin, (unsigned long long)end);
	if (end > data_len)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: data_offsets [%llu, %llu] past the end of "
				  "the data (%llu bytes)", path, name, (unsigned long long)begin,
				  (unsigned long long)end, (unsigned long long)data_len);
	if (end - begin != numel * esize)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s: data_offsets [%llu, %llu] hold %llu bytes, "
				  "but %llu elements of %s need %llu", path, name,
				  (unsigned long long)begin, (unsigned long long)end,
				  (unsigned long long)(end - begin), (unsigned long long)numel,
				  ds, (unsigned long long)(numel * esize));

	if (grow(&set->tensors, &set->cap, set->n + 1, sizeof *set->tensors) < 0)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
	struct st_tensor *t = &set->tensors[set->n];
	memset(t, 0, sizeof *t);
	t->name = strdup(name);
	if (!t->name)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
	set->n++;
	t->dtype = dt;
	t->ndim = (int)ndim;
	memcpy(t->shape, shape, sizeof shape);
	t->numel = (int64_t)numel;
	t->nbytes = (size_t)(end - begin);
	t->file = f->path;
	t->data = (const char *)f->map + data_start + begin;
	return 0;
}

/* Give every tensor of [first, set->n) whose address is misaligned for its
 * element type an aligned private copy (HF pads headers, so this is rare). */
static int
st_align(st_set *set, size_t first, const char *path, char *err, size_t errlen)
{
	for (size_t i = first; i < set->n; i++) {
		struct st_tensor *t = &set->tensors[i];
		size_t a = st_dtype_size(t->dtype);
		if (((uintptr_t)t->data % a) == 0)
			continue;
		if (grow(&set->copies, &set->cap_copies, set->n_copies + 1,
			 sizeof *set->copies) < 0)
			return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
		void *p = malloc(t->nbytes);   /* malloc aligns for any scalar */
		if (!p)
			return eng_seterr(err, errlen, ENG_ERR_NOMEM,
					  "%s: tensor %s: out of memory (%zu bytes)",
					  path, t->name, t->nbytes);
		memcpy(p, t->data, t->nbytes);
		set->copies[set->n_copies++] = p;
		t->data = p;
	}
	return 0;
}

/* Map one file and append its tensors to set. */
static int
st_add_file(st_set *set, const char *path, char *err, size_t errlen)
{
	int rc = 0, fd = -1;
	json_t *root = NULL;
	struct span *spans = NULL;
	size_t first = set->n;

	if (grow(&set->files, &set->cap_files, set->n_files + 1,
		 sizeof *set->files) < 0)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
	struct st_file *f = &set->files[set->n_files];
	memset(f, 0, sizeof *f);
	f->path = strdup(path);
	if (!f->path)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
	set->n_files++;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = eng_seterr(err, errlen, ENG_ERR_IO, "%s: %s", path, strerror(errno));
		goto fail;
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		rc = eng_seterr(err, errlen, ENG_ERR_IO, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(sb.st_mode)) {
		rc = eng_seterr(err, errlen, ENG_ERR_IO, "%s: not a regular file", path);
		goto fail;
	}
	if (sb.st_size < 8) {
		rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
				"%s: file is %lld bytes, too short for a safetensors header",
				path, (long long)sb.st_size);
		goto fail;
	}
	void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED) {
		rc = eng_seterr(err, errlen, ENG_ERR_IO, "%s: mmap: %s", path, strerror(errno));
		goto fail;
	}
	f->map = map;
	f->size = (size_t)sb.st_size;

	const unsigned char *b = map;
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = (hlen << 8) | b[i];
	uint64_t fsize = (uint64_t)f->size;
	if (hlen > fsize - 8) {
		rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
				"%s: header length %llu exceeds the file size (%llu bytes)",
				path, (unsigned long long)hlen, (unsigned long long)fsize);
		goto fail;
	}
	if (hlen > ST_MAX_HEADER) {
		rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
				"%s: header length %llu is over the %llu-byte limit",
				path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
		goto fail;
	}
	uint64_t data_start = 8 + hlen;
	uint64_t data_len = fsize - data_start;

	json_error_t jerr;
	root = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		if (json_error_code(&jerr) == json_error_duplicate_key)
			rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
					"%s: duplicate tensor name in header: %s",
					path, jerr.text);
		else
			rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
					"%s: header is not valid JSON: %s (line %d, column %d)",
					path, jerr.text, jerr.line, jerr.column);
		goto fail;
	}
	if (!json_is_object(root)) {
		rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
				"%s: header is not a JSON object", path);
		goto fail;
	}

	const char *name;
	json_t *entry;
	json_object_foreach(root, name, entry) {
		if (strcmp(name, "__metadata__") == 0) {
			const char *k;
			json_t *v;
			if (!json_is_object(entry)) {
				rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
						"%s: __metadata__ is not an object", path);
				goto fail;
			}
			json_object_foreach(entry, k, v) {
				if (!json_is_string(v)) {
					rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
							"%s: __metadata__ value \"%s\" is not a string",
							path, k);
					goto fail;
				}
			}
			continue;
		}
		rc = st_add_entry(set, path, name, entry, f, data_start, data_len, err, errlen);
		if (rc < 0)
			goto fail;
	}

	/* Overlap: sort this file's non-empty byte ranges and compare neighbours. */
	size_t nf = set->n - first, ns = 0;
	if (nf) {
		spans = malloc(nf * sizeof *spans);
		if (!spans) {
			rc = eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
			goto fail;
		}
	}
	for (size_t i = first; i < set->n; i++) {
		const struct st_tensor *t = &set->tensors[i];
		if (t->nbytes == 0)
			continue;
		uint64_t begin = (uint64_t)((const char *)t->data - (const char *)map) - data_start;
		spans[ns++] = (struct span){ begin, begin + t->nbytes, t->name };
	}
	if (ns)
		qsort(spans, ns, sizeof *spans, cmp_span);
	for (size_t i = 1; i < ns; i++) {
		if (spans[i].begin < spans[i - 1].end) {
			rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
					"%s: tensors %s [%llu, %llu] and %s [%llu, %llu] overlap",
					path, spans[i - 1].name,
					(unsigned long long)spans[i - 1].begin,
					(unsigned long long)spans[i - 1].end, spans[i].name,
					(unsigned long long)spans[i].begin,
					(unsigned long long)spans[i].end);
			goto fail;
		}
	}

	rc = st_align(set, first, path, err, errlen);
fail:
	free(spans);
	json_decref(root);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Build the name index; names must be unique across every file. */
static int
st_index(st_set *set, char *err, size_t errlen)
{
	const struct st_tensor **ptrs = NULL;
	int rc = 0;

	if (set->n == 0)
		return 0;
	ptrs = malloc(set->n * sizeof *ptrs);
	set->by_name = malloc(set->n * sizeof *set->by_name);
	if (!ptrs || !set->by_name) {
		rc = eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < set->n; i++)
		ptrs[i] = &set->tensors[i];
	qsort(ptrs, set->n, sizeof *ptrs, cmp_tensor_name);
	for (size_t i = 0; i < set->n; i++) {
		if (i > 0 && strcmp(ptrs[i]->name, ptrs[i - 1]->name) == 0) {
			rc = eng_seterr(err, errlen, ENG_ERR_FORMAT,
					"%s: duplicate tensor name %s (also in %s)",
					ptrs[i]->file, ptrs[i]->name, ptrs[i - 1]->file);
			goto fail;
		}
		set->by_name[i] = (size_t)(ptrs[i] - set->tensors);
	}
fail:
	free(ptrs);
	return rc;
}

st_set *
st_open_file(const char *path, char *err, size_t errlen)
{
	st_set *set = calloc(1, sizeof *set);
	if (!set) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
		return NULL;
	}
	if (st_add_file(set, path, err, errlen) < 0 || st_index(set, err, errlen) < 0) {
		st_close(set);
		return NULL;
	}
	return set;
}

static char *
path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

/* A shard file name from the index: a plain name inside the directory. */
static int
shard_name_ok(const char *s)
{
	return s[0] != '\0' && !strchr(s, '/') && !strstr(s, "..");
}

static st_set *
st_open_sharded(const char *dir, const char *index, char *err, size_t errlen)
{
	st_set *set = NULL;
	json_t *root = NULL;
	char *spath = NULL;
	json_error_t jerr;

	root = json_load_file(index, 0, &jerr);
	if (!root) {
		eng_seterr(err, errlen, ENG_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)",
			   index, jerr.text, jerr.line, jerr.column);
		goto fail;
	}
	json_t *wm = json_object_get(root, "weight_map");
	if (!json_is_object(wm)) {
		eng_seterr(err, errlen, ENG_ERR_FORMAT,
			   "%s: \"weight_map\" missing or not an object", index);
		goto fail;
	}
	set = calloc(1, sizeof *set);
	if (!set) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", index);
		goto fail;
	}

	/* Open each distinct shard once, in the order first named. */
	const char *name;
	json_t *v;
	json_object_foreach(wm, name, v) {
		if (!json_is_string(v)) {
			eng_seterr(err, errlen, ENG_ERR_FORMAT,
				   "%s: weight_map entry for %s is not a string", index, name);
			goto fail;
		}
		const char *shard = json_string_value(v);
		if (!shard_name_ok(shard)) {
			eng_seterr(err, errlen, ENG_ERR_FORMAT,
				   "%s: weight_map entry for %s names shard \"%s\" outside "
				   "the directory", index, name, shard);
			goto fail;
		}
		spath = path_join(dir, shard);
		if (!spath) {
			eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", index);
			goto fail;
		}
		int seen = 0;
		for (size_t i = 0; i < set->n_files && !seen; i++)
			seen = strcmp(set->files[i].path, spath) == 0;
		if (!seen && st_add_file(set, spath, err, errlen) < 0)
			goto fail;
		free(spath);
		spath = NULL;
	}
	if (st_index(set, err, errlen) < 0)
		goto fail;

	/* Every mapped name must be in the shard the map names. */
	json_object_foreach(wm, name, v) {
		const struct st_tensor *t = st_find(set, name);
		spath = path_join(dir, json_string_value(v));
		if (!spath) {
			eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", index);
			goto fail;
		}
		if (!t || strcmp(t->file, spath) != 0) {
			eng_seterr(err, errlen, ENG_ERR_FORMAT,
				   "%s: tensor %s is mapped to %s but not found there%s%s",
				   index, name, json_string_value(v),
				   t ? "; it is in " : "", t ? t->file : "");
			goto fail;
		}
		free(spath);
		spath = NULL;
	}
	json_decref(root);
	return set;
fail:
	free(spath);
	json_decref(root);
	st_close(set);
	return NULL;
}

st_set *
st_open_dir(const char *dir, char *err, size_t errlen)
{
	st_set *set = NULL;
	char *single = path_join(dir, "model.safetensors");
	char *index = path_join(dir, "model.safetensors.index.json");
	if (!single || !index) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", dir);
		goto done;
	}
	if (access(single, F_OK) == 0)
		set = st_open_file(single, err, errlen);
	else if (access(index, F_OK) == 0)
		set = st_open_sharded(dir, index, err, errlen);
	else
		eng_seterr(err, errlen, ENG_ERR_NOT_FOUND,
			   "%s: no model.safetensors or model.safetensors.index.json", dir);
done:
	free(single);
	free(index);
	return set;
}
