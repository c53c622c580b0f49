/* test_safetensors.c - safetensors loading (single, sharded, corrupt) and the
 * f16/bf16 conversions against a float64 reference. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "status.h"
#include "st_writer.h"
#include "testutil.h"

/* ---- float64 reference for the small float formats ------------------------ */

/* Value of a non-negative code of a binary format with ebits exponent bits
 * and mbits mantissa bits; the all-ones exponent with m = 0 decodes to
 * 2^(emax+1), the first value past the largest finite one. */
static double
ref_decode(uint32_t code, int ebits, int mbits)
{
	int bias = (1 << (ebits - 1)) - 1;
	uint32_t e = code >> mbits, m = code & ((1u << mbits) - 1);
	if (e == 0)
		return ldexp((double)m, 1 - bias - mbits);
	return ldexp((double)(m + (1u << mbits)), (int)e - bias - mbits);
}

/* Nearest code to x (finite or not), ties to the even code, overflow to inf;
 * a brute-force table search.  NaN is handled by the caller. */
struct ref_fmt {
	int ebits, mbits;
	uint32_t inf;          /* code of +inf                */
	double *vals;          /* [inf + 1]: vals[inf] = 2^(emax+1) */
};

static void
ref_init(struct ref_fmt *f, int ebits, int mbits)
{
	f->ebits = ebits;
	f->mbits = mbits;
	f->inf = ((1u << ebits) - 1) << mbits;
	f->vals = malloc((f->inf + 1) * sizeof *f->vals);
	assert_non_null(f->vals);
	for (uint32_t c = 0; c <= f->inf; c++)
		f->vals[c] = ref_decode(c, ebits, mbits);
}

static uint32_t
ref_encode(const struct ref_fmt *f, double x)
{
	uint32_t sign = signbit(x) ? 1u << (f->ebits + f->mbits) : 0;
	double ax = fabs(x);
	if (ax >= f->vals[f->inf])
		return sign | f->inf;
	/* Largest lo with vals[lo] <= ax. */
	uint32_t lo = 0, hi = f->inf;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (f->vals[mid] <= ax)
			lo = mid;
		else
			hi = mid;
	}
	double d0 = ax - f->vals[lo], d1 = f->vals[lo + 1] - ax;
	uint32_t c = d0 < d1 ? lo : d1 < d0 ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
	return sign | c;
}

static float
bits_f(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

static uint32_t
f_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	return u;
}

/* Deterministic generator for the tests (xorshift64*). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t
rng32(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

static void
test_f16_to_f32_all(void **state)
{
	(void)state;
	for (uint32_t h = 0; h < 65536; h++) {
		float got = st_f16_to_f32((uint16_t)h);
		uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
		int neg = (h & 0x8000) != 0;
		if (e == 0x1f && m) {
			assert_true(isnan(got));
			continue;
		}
		double want = e == 0x1f ? INFINITY : ref_decode(h & 0x7fff, 5, 10);
		if (neg)
			want = -want;
		if ((double)got != want || !signbit(got) != !signbit(want)) {
			fprintf(stderr, "f16 %04x: got %a want %a\n", h, (double)got, want);
			fail();
		}
	}
}

static void
check_encode(const struct ref_fmt *f, uint16_t (*enc)(float), float x, const char *what)
{
	uint16_t got = enc(x);
	if (isnan(x)) {
		uint32_t e = (got >> f->mbits) & ((1u << f->ebits) - 1);
		uint32_t m = got & ((1u << f->mbits) - 1);
		if (e != (1u << f->ebits) - 1 || m == 0) {
			fprintf(stderr, "%s(NaN %08x) = %04x is not NaN\n", what, f_bits(x), got);
			fail();
		}
		return;
	}
	uint32_t want = ref_encode(f, (double)x);
	if (got != want) {
		fprintf(stderr, "%s(%a = %08x): got %04x want %04x\n", what, (double)x,
			f_bits(x), got, want);
		fail();
	}
}

/* Many values: every code of the format, the midpoints between neighbours
 * (exact ties), just above and below them, edge cases and random bits. */
static void
check_encoder(int ebits, int mbits, uint16_t (*enc)(float), const char *what)
{
	struct ref_fmt f;
	ref_init(&f, ebits, mbits);
	size_t checked = 0;
	for (uint32_t c = 0; c < f.inf; c++) {
		double lo = f.vals[c], hi = f.vals[c + 1];
		float xs[] = { (float)lo, (float)((lo + hi) / 2),
			       nextafterf((float)((lo + hi) / 2), INFINITY),
			       nextafterf((float)((lo + hi) / 2), 0.0f) };
		for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
			check_encode(&f, enc, xs[i], what);
			check_encode(&f, enc, -xs[i], what);
			checked += 2;
		}
	}
	float edges[] = { 0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN,
			  bits_f(0x7f800001u), bits_f(0xffc00000u), FLT_MAX, -FLT_MAX,
			  FLT_MIN, bits_f(1), bits_f(0x007fffffu), 65504.0f, 65519.996f,
			  65520.0f, 65536.0f, 1e-8f, 5.9604645e-8f, 2.9802322e-8f,
			  2.9802326e-8f, 3.3895314e38f, 3.3961775e38f, 1.0f, 1.0009765625f };
	for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++, checked++)
		check_encode(&f, enc, edges[i], what);
	for (int i = 0; i < 1000000; i++, checked++)
		check_encode(&f, enc, bits_f(rng32()), what);
	printf("# %s: %zu values match the float64 reference\n", what, checked);
	free(f.vals);
}

static void
test_f32_to_f16(void **state)
{
	(void)state;
	check_encoder(5, 10, st_f32_to_f16, "st_f32_to_f16");
	/* Round trip of every finite half. */
	for (uint32_t h = 0; h < 65536; h++)
		if (((h >> 10) & 0x1f) != 0x1f)
			assert_int_equal(st_f32_to_f16(st_f16_to_f32((uint16_t)h)), h);
}

static void
test_f32_to_bf16(void **state)
{
	(void)state;
	check_encoder(8, 7, st_f32_to_bf16, "st_f32_to_bf16");
	for (uint32_t h = 0; h < 65536; h++)
		if (((h >> 7) & 0xff) != 0xff)
			assert_int_equal(st_f32_to_bf16(st_bf16_to_f32((uint16_t)h)), h);
}

static void
test_dtype_helpers(void **state)
{
	(void)state;
	assert_int_equal(st_dtype_size(ST_F32), 4);
	assert_int_equal(st_dtype_size(ST_F16), 2);
	assert_int_equal(st_dtype_size(ST_BF16), 2);
	assert_string_equal(st_dtype_name(ST_F32), "F32");
	assert_string_equal(st_dtype_name(ST_F16), "F16");
	assert_string_equal(st_dtype_name(ST_BF16), "BF16");
}

/* ---- files ---------------------------------------------------------------- */

static int
setup(void **state)
{
	return tu_dirfx_setup(state, "model.safetensors");
}

static int
teardown(void **state)
{
	return tu_dirfx_teardown(state);
}

/* Is [p, p+n) inside a mapping of file path (per /proc/self/maps)? */
static int
in_file_mapping(const void *p, size_t n, const char *path)
{
	char real[4096];
	if (!realpath(path, real))
		return 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return 0;
	char line[8192];
	int found = 0;
	while (!found && fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		size_t ll = strlen(line), rl = strlen(real);
		if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || ll < rl ||
		    strcmp(line + ll - rl, real) != 0)
			continue;
		found = (uintptr_t)p >= lo && (uintptr_t)p + n <= hi;
	}
	fclose(f);
	return found;
}

/* Values of the reference tensors: a[2,3] F32, s[] F32, b[5] F16, c[2,2] BF16,
 * written in that order so that every one is aligned in the file. */
static const float va[6] = { 1.5f, -2.25f, 3.0e-3f, 1e20f, -0.0f, 7.0f };
static const float vb[5] = { 0.5f, -1.0f, 65504.0f, 5.9604645e-8f, 3.140625f };
static const float vc[4] = { 1.0f, -3.5f, 1e30f, 2.0f };
static const float vs = 42.0f;

static void
add_reference(stw *w, const char *prefix, int which)
{
	char name[64];
	uint16_t b16[5], c16[4];
	for (int i = 0; i < 5; i++)
		b16[i] = st_f32_to_f16(vb[i]);
	for (int i = 0; i < 4; i++)
		c16[i] = st_f32_to_bf16(vc[i]);
	if (which & 1) {
		snprintf(name, sizeof name, "%sa", prefix);
		assert_int_equal(stw_add(w, name, "F32", 2, (int64_t[]){ 2, 3 }, va, sizeof va), 0);
	}
	if (which & 8) {
		snprintf(name, sizeof name, "%ss", prefix);
		assert_int_equal(stw_add(w, name, "F32", 0, NULL, &vs, sizeof vs), 0);
	}
	if (which & 2) {
		snprintf(name, sizeof name, "%sb", prefix);
		assert_int_equal(stw_add(w, name, "F16", 1, (int64_t[]){ 5 }, b16, sizeof b16), 0);
	}
	if (which & 4) {
		snprintf(name, sizeof name, "%sc", prefix);
		assert_int_equal(stw_add(w, name, "BF16", 2, (int64_t[]){ 2, 2 }, c16, sizeof c16), 0);
	}
}

static void
check_tensor(const st_set *set, const char *name, enum st_dtype dt, int ndim,
	     const int64_t *shape, const float *want, size_t n, const char *file,
	     int mapped)
{
	const struct st_tensor *t = st_find(set, name);
	assert_non_null(t);
	assert_string_equal(t->name, name);
	assert_int_equal(t->dtype, dt);
	assert_int_equal(t->ndim, ndim);
	for (int i = 0; i < ndim; i++)
		assert_int_equal(t->shape[i], shape[i]);
	assert_int_equal(t->numel, (int64_t)n);
	assert_int_equal(t->nbytes, n * st_dtype_size(dt));
	assert_string_equal(t->file, file);
	assert_int_equal((uintptr_t)t->data % st_dtype_size(dt), 0);
	if (mapped >= 0)
		assert_int_equal(in_file_mapping(t->data, t->nbytes, file), mapped);
	for (size_t i = 0; i < n; i++) {
		float got = st_load(t->data, dt, i);
		float w = want[i];
		/* F16/BF16 values are what the conversion of the source gives. */
		if (dt == ST_F16)
			w = st_f16_to_f32(st_f32_to_f16(w));
		if (dt == ST_BF16)
			w = st_bf16_to_f32(st_f32_to_bf16(w));
		assert_true(f_bits(got) == f_bits(w));
	}
}

static void
test_single_file(void **state)
{
	struct tu_dirfx *fx = *state;
	stw *w = stw_new();
	assert_non_null(w);
	add_reference(w, "", 15);
	assert_int_equal(stw_write(w, fx->path, 8, "{\"format\":\"pt\"}"), 0);
	stw_free(w);

	st_set *set = st_open_file(fx->path, fx->err, sizeof fx->err);
	assert_non_null(set);
	assert_int_equal(st_count(set), 4);
	check_tensor(set, "a", ST_F32, 2, (int64_t[]){ 2, 3 }, va, 6, fx->path, 1);
	check_tensor(set, "b", ST_F16, 1, (int64_t[]){ 5 }, vb, 5, fx->path, 1);
	check_tensor(set, "c", ST_BF16, 2, (int64_t[]){ 2, 2 }, vc, 4, fx->path, 1);
	check_tensor(set, "s", ST_F32, 0, NULL, &vs, 1, fx->path, 1);
	assert_null(st_find(set, "nope"));
	assert_null(st_find(set, "__metadata__"));
	/* st_at enumerates each tensor exactly once. */
	int seen[4] = { 0 };
	for (size_t i = 0; i < st_count(set); i++) {
		const struct st_tensor *t = st_at(set, i);
		assert_non_null(t);
		assert_ptr_equal(st_find(set, t->name), t);
		seen[t->name[0] == 'a' ? 0 : t->name[0] == 'b' ? 1 : t->name[0] == 'c' ? 2 : 3]++;
	}
	for (int i = 0; i < 4; i++)
		assert_int_equal(seen[i], 1);
	assert_null(st_at(set, 4));
	st_close(set);

	/* st_open_dir finds the same file. */
	set = st_open_dir(fx->dir, fx->err, sizeof fx->err);
	assert_non_null(set);
	assert_int_equal(st_count(set), 4);
	st_close(set);
	st_close(NULL);
}

/* Header padded so the data starts at an odd address: F32 and 16-bit
 * tensors must come back through aligned copies with the same values. */
static void
test_misaligned(void **state)
{
	struct tu_dirfx *fx = *state;
	stw *w = stw_new();
	assert_non_null(w);
	add_reference(w, "", 15);
	assert_int_equal(stw_write(w, fx->path, 1, NULL), 0);
	stw_free(w);
	/* Find out where the data starts, then make it odd by rewriting with
	 * one more byte of padding if needed. */
	size_t len;
	unsigned char *buf = (unsigned char *)tu_read_file(fx->path, &len);
	assert_non_null(buf);
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--)
		hl = (hl << 8) | buf[i];
	if ((8 + hl) % 2 == 0) {
		char *h = malloc(hl + 2);
		assert_non_null(h);
		memcpy(h, buf + 8, hl);
		h[hl] = ' ';
		h[hl + 1] = 0;
		assert_int_equal(stw_write_raw(fx->path, hl + 1, h, buf + 8 + hl, len - 8 - hl), 0);
		free(h);
	}
	free(buf);

	st_set *set = st_open_file(fx->path, fx->err, sizeof fx->err);
	assert_non_null(set);
	check_tensor(set, "a", ST_F32, 2, (int64_t[]){ 2, 3 }, va, 6, fx->path, 0);
	check_tensor(set, "b", ST_F16, 1, (int64_t[]){ 5 }, vb, 5, fx->path, -1);
	check_tensor(set, "c", ST_BF16, 2, (int64_t[]){ 2, 2 }, vc, 4, fx->path, -1);
	check_tensor(set, "s", ST_F32, 0, NULL, &vs, 1, fx->path, -1);
	st_close(set);
}

static void
write_index(const char *dir, const char *body)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
	assert_int_equal(tu_write_file(p, body, strlen(body)), 0);
}

/* Two shards: one holds a and b, the other c and s. */
static void
write_shards(const char *dir, char s1[1024], char s2[1024])
{
	snprintf(s1, 1024, "%s/model-00001-of-00002.safetensors", dir);
	snprintf(s2, 1024, "%s/model-00002-of-00002.safetensors", dir);
	stw *w = stw_new();
	assert_non_null(w);
	add_reference(w, "", 1 | 2);
	assert_int_equal(stw_write(w, s1, 8, NULL), 0);
	stw_free(w);
	w = stw_new();
	assert_non_null(w);
	add_reference(w, "", 4 | 8);
	assert_int_equal(stw_write(w, s2, 8, NULL), 0);
	stw_free(w);
}

static const char *good_index =
	"{\"metadata\": {\"total_size\": 50}, \"weight_map\": {"
	"\"a\": \"model-00001-of-00002.safetensors\","
	"\"c\": \"model-00002-of-00002.safetensors\","
	"\"b\": \"model-00001-of-00002.safetensors\","
	"\"s\": \"model-00002-of-00002.safetensors\"}}";

static void
test_sharded(void **state)
{
	struct tu_dirfx *fx = *state;
	char s1[1024], s2[1024];
	write_shards(fx->dir, s1, s2);
	write_index(fx->dir, good_index);

	st_set *set = st_open_dir(fx->dir, fx->err, sizeof fx->err);
	if (!set)
		fprintf(stderr, "%s\n", fx->err);
	assert_non_null(set);
	assert_int_equal(st_count(set), 4);
	check_tensor(set, "a", ST_F32, 2, (int64_t[]){ 2, 3 }, va, 6, s1, 1);
	check_tensor(set, "b", ST_F16, 1, (int64_t[]){ 5 }, vb, 5, s1, 1);
	check_tensor(set, "c", ST_BF16, 2, (int64_t[]){ 2, 2 }, vc, 4, s2, 1);
	check_tensor(set, "s", ST_F32, 0, NULL, &vs, 1, s2, 1);
	st_close(set);
}

/* Open must fail and the error must contain each of the given strings. */
static void
expect_fail(st_set *set, const char *err, ...)
{
	if (set) {
		st_close(set);
		fprintf(stderr, "open succeeded; expected an error\n");
		fail();
	}
	va_list ap;
	va_start(ap, err);
	const char *s;
	while ((s = va_arg(ap, const char *)) != NULL) {
		if (!strstr(err, s)) {
			fprintf(stderr, "error \"%s\" lacks \"%s\"\n", err, s);
			va_end(ap);
			fail();
		}
	}
	va_end(ap);
	printf("# ok: %s\n", err);
}

/* Write a raw file (declared length = strlen(header)) with n zero bytes of
 * data and expect opening it to fail with the given strings. */
static void
raw_case(struct tu_dirfx *fx, const char *header, size_t n, const char *s1, const char *s2)
{
	unsigned char data[256] = { 0 };
	assert_true(n <= sizeof data);
	assert_int_equal(stw_write_raw(fx->path, strlen(header), header, data, n), 0);
	fx->err[0] = 0;
	expect_fail(st_open_file(fx->path, fx->err, sizeof fx->err), fx->err, fx->path, s1, s2,
		    (const char *)NULL);
}

static void
test_corrupt_file(void **state)
{
	struct tu_dirfx *fx = *state;
	unsigned char data[64] = { 0 };

	/* Missing file, too short, N past the end. */
	char missing[1100];
	snprintf(missing, sizeof missing, "%s/none.safetensors", fx->dir);
	expect_fail(st_open_file(missing, fx->err, sizeof fx->err), fx->err, missing,
		    "No such file", (const char *)NULL);
	assert_int_equal(tu_write_file(fx->path, "abc", 3), 0);
	expect_fail(st_open_file(fx->path, fx->err, sizeof fx->err), fx->err, fx->path,
		    "too short", (const char *)NULL);
	assert_int_equal(stw_write_raw(fx->path, 1000, "{}", data, 8), 0);
	expect_fail(st_open_file(fx->path, fx->err, sizeof fx->err), fx->err, fx->path,
		    "header length 1000 exceeds", (const char *)NULL);
	assert_int_equal(stw_write_raw(fx->path, UINT64_MAX, "{}", data, 8), 0);
	expect_fail(st_open_file(fx->path, fx->err, sizeof fx->err), fx->err, fx->path,
		    "exceeds the file size", (const char *)NULL);

	/* Header not JSON / not an object. */
	raw_case(fx, "{\"a\": {\"dtype\": \"F32\",", 0, "not valid JSON", "line 1");
	raw_case(fx, "", 0, "not valid JSON", NULL);
	raw_case(fx, "[1, 2]", 0, "not a JSON object", NULL);
	raw_case(fx, "{\"a\": 3}", 0, "tensor a", "not an object");
	raw_case(fx, "{\"__metadata__\": [1]}", 0, "__metadata__", "not an object");
	raw_case(fx, "{\"__metadata__\": {\"k\": 1}}", 0, "__metadata__", "\"k\"");

	/* dtype: unknown vs. known-but-unsupported. */
	raw_case(fx, "{\"w\": {\"dtype\": \"Q7\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
		 4, "tensor w", "unknown dtype \"Q7\"");
	raw_case(fx, "{\"ids\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}}",
		 8, "tensor ids", "dtype I64 is not supported");
	raw_case(fx, "{\"x\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}",
		 8, "tensor x", "dtype F64 is not supported");
	raw_case(fx, "{\"m\": {\"dtype\": \"BOOL\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
		 1, "tensor m", "dtype BOOL is not supported");
	raw_case(fx, "{\"q\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
		 1, "tensor q", "dtype F8_E4M3 is not supported");
	raw_case(fx, "{\"u\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}",
		 1, "tensor u", "dtype U8 is not supported");
	raw_case(fx, "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "tensor w", "dtype");

	/* Shapes. */
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}",
		 4, "tensor w", "shape[0]");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}",
		 4, "tensor w", "shape[0]");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4], "
		 "\"data_offsets\": [0, 0]}}", 0, "tensor w", "larger than");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [65536, 65536, 65536, 65536], "
		 "\"data_offsets\": [0, 16]}}", 16, "tensor w", "larger than");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], "
		 "\"data_offsets\": [0, 4]}}", 4, "tensor w", "5 dimensions");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 16]}}",
		 16, "tensor w", "shape");

	/* Offsets. */
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}",
		 8, "tensor w", "[8, 4] out of order");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
		 8, "tensor w", "past the end");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 16]}}",
		 16, "tensor w", "12");
	raw_case(fx, "{\"w\": {\"dtype\": \"F16\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}",
		 16, "tensor w", "need 8");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}",
		 4, "tensor w", "data_offsets");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}",
		 4, "tensor w", "data_offsets");
	raw_case(fx, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "tensor w",
		 "data_offsets");
	raw_case(fx, "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
		 " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}}",
		 20, "overlap", "[12, 20]");
	raw_case(fx, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]},"
		 " \"b\": {\"dtype\": \"BF16\", \"shape\": [8], \"data_offsets\": [0, 16]}}",
		 16, "overlap", "tensors");

	/* Duplicate names inside one header. */
	raw_case(fx, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
		 " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
		 8, "duplicate", "a");

	/* Zero-sized tensors are fine, and may share an offset. */
	const char *okh = "{\"e\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [4, 4]},"
			  " \"f\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
	assert_int_equal(stw_write_raw(fx->path, strlen(okh), okh, data, 4), 0);
	st_set *set = st_open_file(fx->path, fx->err, sizeof fx->err);
	assert_non_null(set);
	assert_int_equal(st_find(set, "e")->numel, 0);
	assert_int_equal(st_find(set, "e")->nbytes, 0);
	st_close(set);
}

static void
test_corrupt_dir(void **state)
{
	struct tu_dirfx *fx = *state;
	char s1[1024], s2[1024], ip[1100];
	snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", fx->dir);

	/* Neither file. */
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, fx->dir,
		    "no model.safetensors", (const char *)NULL);

	write_shards(fx->dir, s1, s2);

	write_index(fx->dir, "{\"weight_map\": {\"a\": ");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "not valid JSON", (const char *)NULL);
	write_index(fx->dir, "{\"metadata\": {}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "weight_map", (const char *)NULL);
	write_index(fx->dir, "{\"weight_map\": {\"a\": 3}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "entry for a", (const char *)NULL);

	/* Shard names must stay in the directory. */
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"../model-00001-of-00002.safetensors\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "outside", (const char *)NULL);
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"/etc/passwd\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "outside", (const char *)NULL);
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"sub/x.safetensors\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "outside", (const char *)NULL);
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"..\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "outside", (const char *)NULL);

	/* A shard that does not exist is an error naming it. */
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"model-00003-of-00003.safetensors\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err,
		    "model-00003-of-00003.safetensors", "No such file", (const char *)NULL);

	/* A mapped name absent from its shard, or present in the other one. */
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
		    "\"zz\": \"model-00002-of-00002.safetensors\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "tensor zz", "not found", (const char *)NULL);
	write_index(fx->dir, "{\"weight_map\": {\"a\": \"model-00002-of-00002.safetensors\","
		    "\"c\": \"model-00001-of-00002.safetensors\"}}");
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, ip,
		    "tensor a", "not found", (const char *)NULL);

	/* The same name in two shards. */
	stw *w = stw_new();
	assert_non_null(w);
	add_reference(w, "", 4 | 2);
	assert_int_equal(stw_write(w, s2, 8, NULL), 0);
	stw_free(w);
	write_index(fx->dir, good_index);
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err,
		    "duplicate tensor name b", "model-0000", (const char *)NULL);

	/* A corrupt shard reports the shard's path. */
	assert_int_equal(stw_write_raw(s2, 5000, "{}", NULL, 0), 0);
	expect_fail(st_open_dir(fx->dir, fx->err, sizeof fx->err), fx->err, s2,
		    "exceeds", (const char *)NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dtype_helpers),
		cmocka_unit_test(test_f16_to_f32_all),
		cmocka_unit_test(test_f32_to_f16),
		cmocka_unit_test(test_f32_to_bf16),
		cmocka_unit_test_setup_teardown(test_single_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_misaligned, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sharded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_dir, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
