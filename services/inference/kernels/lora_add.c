/* One LoRA layer for one engine step, in one call: y[t] += scale * x[t] @ A[s] @ B[s] for each
 * row t whose adapter slot s is not -1 (services/inference/lora_kernel.py builds and calls it).
 *
 * Why a kernel: at decode sizes the torch path spends its time in calls (~5 per layer, ~120
 * layers per step), not in arithmetic. Here a layer is one call.
 *
 * Why this loop order: every row's sums run in one fixed order (over the input features for
 * the shrink, over the rank for the expand), whatever rows share its step, its tile or its
 * thread: a request's answer does not depend on its batch. Rows of one slot go in tiles of
 * up to TILE so that each weight read from cache serves every row of the tile.
 *
 * Threads: a large step's tiles are shared out with OpenMP. The shared object needs
 * libgomp.so.1, which in a process that has imported torch is torch's own copy (same soname,
 * already loaded): one thread pool, bound to the cores as vLLM bound torch's, not a second
 * pool fighting it.
 *
 * Layouts (contiguous): at [slots, in, sr] with sr = slices x rank rounded up to LANES (slice
 * i's rank columns at i*rank, the rest zero), b[i] [slots, rank, out_i]; both float32, or bf16
 * (w_bf16) where the engine's weights are bf16: the same values in half the bytes, and a step
 * reads every adapter's weights from memory, since the base model's pass evicts them from the
 * caches. x and y are float32 or bf16 (rounded to nearest even, as torch casts), row-major
 * with the given row strides. Sums are float32. `order` lists the rows grouped by slot (rows
 * without an adapter, anywhere in it, are skipped). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The signature every variant shares (the dispatcher below calls through it). */
#define LORA_ADD_PARAMS                                                                       \
    void *y, int y_bf16, int64_t y_stride, const void *x, int x_bf16, int64_t x_stride,       \
    const int64_t *slot_of_row, const int64_t *order, int64_t n, const void *at, int w_bf16,  \
    int64_t in, int64_t sr, int64_t slices, int64_t rank, const void *const *b,               \
    const int64_t *out_sizes, float scale
#define LORA_ADD_ARGS                                                                         \
    y, y_bf16, y_stride, x, x_bf16, x_stride, slot_of_row, order, n, at, w_bf16, in, sr,      \
    slices, rank, b, out_sizes, scale

#ifdef DISPATCH
/* The exported entry: one variant per instruction set, compiled from this file with -DNAME
 * and -DLANES (lora_kernel.py), chosen once by what the CPU supports. A variant's vectors are
 * its registers' width: 16-float vectors spill AVX2's registers (docs/benchmarks.md,
 * inference (a)). */
const char *lora_add_isa(void);
int lora_add_supported(const char *isa);
#if defined(__x86_64__)
int lora_add_avx512(LORA_ADD_PARAMS);
int lora_add_avx2(LORA_ADD_PARAMS);
#endif
int lora_add_baseline(LORA_ADD_PARAMS);

typedef int (*lora_add_fn)(LORA_ADD_PARAMS);
static lora_add_fn chosen;
static const char *chosen_isa;

/* Whether this CPU runs the variant for `isa` ("avx512", "avx2" or "baseline"). */
int lora_add_supported(const char *isa) {
    if (strcmp(isa, "baseline") == 0) return 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (strcmp(isa, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (strcmp(isa, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

static void choose(void) {
#if defined(__x86_64__)
    if (lora_add_supported("avx512")) { chosen = lora_add_avx512; chosen_isa = "avx512"; return; }
    if (lora_add_supported("avx2")) { chosen = lora_add_avx2; chosen_isa = "avx2"; return; }
#endif
    chosen = lora_add_baseline;
    chosen_isa = "baseline";
}

const char *lora_add_isa(void) {
    if (!chosen) choose();
    return chosen_isa;
}

int lora_add(LORA_ADD_PARAMS) {
    if (!chosen) choose();
    return chosen(LORA_ADD_ARGS);
}

#else  /* a variant */

#ifndef LANES
#define LANES 4          /* floats per vector: 16 for AVX-512, 8 for AVX2, 4 otherwise */
#endif
#ifndef NAME
#define NAME lora_add_baseline
#endif
#define TILE 4           /* rows of one slot computed together (1, 2 or 4 at a time) */
#define MAX_SR 256       /* slices x rank (padded to 16): 3 x 64 with vLLM's largest rank */
/* The expand's block of outputs per row of the tile, in vectors: with four rows, 16
 * accumulators fit AVX-512's 32 registers, 8 those of AVX2 and SSE (16 each). */
#if LANES == 16
#define OUT_VECTORS 4
#else
#define OUT_VECTORS 2
#endif
/* Steps with fewer tiles run on the calling thread: at decode sizes a tile is a few
 * microseconds, and sharing them out cost more than it saved (docs/benchmarks.md, inference
 * (a)). */
#define PARALLEL_TILES 32

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));

#define INLINE static inline __attribute__((always_inline))

static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)v << 16;
    return c.f;
}

static inline uint16_t float_to_bf16(float f) {
    union { uint32_t u; float f; } c;
    c.f = f;
    if ((c.u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  /* NaN, as torch writes it */
    c.u += 0x7fffu + ((c.u >> 16) & 1u);
    return (uint16_t)(c.u >> 16);
}

static inline vf loadv(const float *p) { vf v; memcpy(&v, p, sizeof(v)); return v; }

/* bf16 weights widened to float32 a vector at a time (exact). */
typedef uint32_t vu __attribute__((vector_size(LANES * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(LANES * sizeof(uint16_t))));

static inline vf widen(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof(h));
    const vu u = __builtin_convertvector(h, vu) << 16;
    vf f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* A weight vector or scalar, stored as float32 or (WB) bf16. */
INLINE vf loadw(const void *w, int64_t at, const int WB) {
    return WB ? widen((const uint16_t *)w + at) : loadv((const float *)w + at);
}

INLINE float loadw1(const void *w, int64_t at, const int WB) {
    return WB ? bf16_to_float(((const uint16_t *)w)[at]) : ((const float *)w)[at];
}

static inline void load_row(float *dst, const void *x, int x_bf16, int64_t row, int64_t stride,
                            int64_t in) {
    if (x_bf16) {
        const uint16_t *src = (const uint16_t *)x + row * stride;
        for (int64_t i = 0; i < in; i++) dst[i] = bf16_to_float(src[i]);
    } else {
        memcpy(dst, (const float *)x + row * stride, (size_t)in * sizeof(float));
    }
}

static inline void add_row(void *y, int y_bf16, int64_t row, int64_t stride, int64_t at,
                           const float *delta, int64_t count) {
    if (y_bf16) {
        uint16_t *dst = (uint16_t *)y + row * stride + at;
        for (int64_t o = 0; o < count; o++)
            dst[o] = float_to_bf16(bf16_to_float(dst[o]) + delta[o]);
    } else {
        float *dst = (float *)y + row * stride + at;
        for (int64_t o = 0; o < count; o++) dst[o] += delta[o];
    }
}

typedef struct {
    void *y; int y_bf16; int64_t y_stride;
    const void *x; int x_bf16; int64_t x_stride;
    const void *at; int64_t in, sr, slices, rank;
    const void *const *b; const int64_t *out_sizes;
    float scale;
} layer_t;

/* T rows of one slot (T a constant after inlining: the accumulators stay in registers). Each
 * row's arithmetic is the same whatever T is: one accumulator per row and lane, summed in
 * order. */
INLINE void tile(const layer_t *L, const int64_t *rows, int64_t slot, float *xs, const int T,
                 const int WB) {
    const int64_t in = L->in, sr = L->sr, rank = L->rank;
    float h[TILE][MAX_SR];
    float delta[OUT_VECTORS * LANES];
    for (int r = 0; r < T; r++) load_row(xs + r * in, L->x, L->x_bf16, rows[r], L->x_stride, in);

    /* shrink: h[r] = scale * (x[r] @ At[slot]), each lane summed over i in order */
    const int64_t a0 = slot * in * sr;
    for (int64_t j = 0; j < sr; j += LANES) {
        vf acc[TILE] = {{0}};
        for (int64_t i = 0; i < in; i++) {
            const vf ai = loadw(L->at, a0 + i * sr + j, WB);
            for (int r = 0; r < T; r++) acc[r] += xs[r * in + i] * ai;
        }
        for (int r = 0; r < T; r++) {
            const vf scaled = acc[r] * L->scale;
            memcpy(&h[r][j], &scaled, sizeof(scaled));
        }
    }

    /* expand: y[r, slice s] += h[r, s's rank] @ B_s[slot], each output summed over k in
     * order; blocks of OUT_VECTORS vectors, then single vectors, then single floats */
    int64_t offset = 0;
    for (int64_t s = 0; s < L->slices; s++) {
        const int64_t out = L->out_sizes[s];
        const void *bs = L->b[s];
        const int64_t b0 = slot * rank * out;
        const int64_t hk = s * rank;
        int64_t o0 = 0;
        for (; o0 + OUT_VECTORS * LANES <= out; o0 += OUT_VECTORS * LANES) {
            vf acc[TILE][OUT_VECTORS] = {{{0}}};
            for (int64_t k = 0; k < rank; k++) {
                for (int v = 0; v < OUT_VECTORS; v++) {
                    const vf bv = loadw(bs, b0 + k * out + o0 + v * LANES, WB);
                    for (int r = 0; r < T; r++) acc[r][v] += h[r][hk + k] * bv;
                }
            }
            for (int r = 0; r < T; r++) {
                memcpy(delta, acc[r], sizeof(acc[r]));
                add_row(L->y, L->y_bf16, rows[r], L->y_stride, offset + o0, delta,
                        OUT_VECTORS * LANES);
            }
        }
        for (; o0 + LANES <= out; o0 += LANES) {
            vf acc[TILE] = {{0}};
            for (int64_t k = 0; k < rank; k++) {
                const vf bv = loadw(bs, b0 + k * out + o0, WB);
                for (int r = 0; r < T; r++) acc[r] += h[r][hk + k] * bv;
            }
            for (int r = 0; r < T; r++) {
                memcpy(delta, &acc[r], sizeof(acc[r]));
                add_row(L->y, L->y_bf16, rows[r], L->y_stride, offset + o0, delta, LANES);
            }
        }
        for (; o0 < out; o0++) {
            for (int r = 0; r < T; r++) {
                float sum = 0.0f;
                for (int64_t k = 0; k < rank; k++)
                    sum += h[r][hk + k] * loadw1(bs, b0 + k * out + o0, WB);
                add_row(L->y, L->y_bf16, rows[r], L->y_stride, offset + o0, &sum, 1);
            }
        }
        offset += out;
    }
}

/* Returns 0, or -1 when the layer does not fit the kernel's buffers (the caller then takes the
 * torch path) or memory for its tile list is short. `sr` is slices x rank rounded up to
 * LANES (a_t's padded columns are zero). */
int NAME(LORA_ADD_PARAMS) {
    if (sr > MAX_SR || sr <= 0 || sr % LANES || slices * rank > sr) return -1;
    const layer_t L = {y, y_bf16, y_stride, x, x_bf16, x_stride, at, in, sr, slices, rank, b,
                       out_sizes, scale};
    /* The tiles: where each starts in `order`, and how many rows (1, 2 or 4: three go as two
     * and one). */
    int64_t *start = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    int *size = malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!start || !size) { free(start); free(size); return -1; }
    int64_t tiles = 0;
    for (int64_t g = 0; g < n;) {
        const int64_t slot = slot_of_row[order[g]];
        if (slot < 0) { g++; continue; }
        int t = 1;
        while (t < TILE && g + t < n && slot_of_row[order[g + t]] == slot) t++;
        if (t == 3) t = 2;
        start[tiles] = g;
        size[tiles++] = t;
        g += t;
    }
    int failed = 0;
    #pragma omp parallel if (tiles >= PARALLEL_TILES) reduction(|: failed)
    {
        float *xs = malloc((size_t)TILE * (size_t)in * sizeof(float));
        if (!xs) failed = 1;
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < tiles; i++) {
            if (!xs) continue;
            const int64_t *rows = order + start[i];
            const int64_t slot = slot_of_row[rows[0]];
            if (w_bf16) {
                if (size[i] == 4) tile(&L, rows, slot, xs, 4, 1);
                else if (size[i] == 2) tile(&L, rows, slot, xs, 2, 1);
                else tile(&L, rows, slot, xs, 1, 1);
            } else {
                if (size[i] == 4) tile(&L, rows, slot, xs, 4, 0);
                else if (size[i] == 2) tile(&L, rows, slot, xs, 2, 0);
                else tile(&L, rows, slot, xs, 1, 0);
            }
        }
        free(xs);
    }
    free(start);
    free(size);
    return failed ? -1 : 0;
}

#endif  /* DISPATCH */
