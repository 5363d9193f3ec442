/* One LoRA layer for one engine step, in one call: y[t] += scale * x[t] @ A[s] @ B[s] for each
 * row t whose adapter slot s is not -1 (services/inference/lora_kernel.py builds and calls it).
 *
 * Why a kernel: at decode sizes the torch path spends its time in calls (~5 per layer, ~120
 * layers per step), not in arithmetic. Here a layer is one call.
 *
 * Why this loop order: every row's sums run in one fixed order (over the input features for
 * the shrink, over the rank for the expand), whatever rows share its step, its tile or its
 * thread: a request's answer does not depend on its batch. Rows of one slot go in tiles of
 * TILE so that each weight read from cache serves TILE rows.
 *
 * Layouts (float32, contiguous): at [slots, in, sr] with sr = slices x rank rounded up to
 * LANES (slice i's rank columns at i*rank, the rest zero), b[i] [slots, rank, out_i]. x and y
 * are float32 or bf16 (rounded to nearest even, as torch casts), row-major with the given row
 * strides. `order` lists the rows grouped by slot (rows without an adapter, anywhere in it,
 * are skipped). */

#include <stdint.h>
#include <string.h>

#define TILE 4
#define LANES 16         /* one v16: a zmm register, two ymm, four xmm: GCC lowers it per clone */
#define MAX_SR 256       /* slices x rank (padded to LANES): 3 x 64 with vLLM's largest rank */
#define OUT_VECTORS 4    /* the expand's block of outputs: 4 x LANES per row of the tile */

typedef float v16 __attribute__((vector_size(LANES * sizeof(float))));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof(v)); return v; }
static inline void store16(float *p, v16 v) { memcpy(p, &v, sizeof(v)); }

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

/* Returns 0, or -1 when the layer does not fit the kernel's buffers (the caller then takes the
 * torch path). `sr` is slices x rank rounded up to LANES (a_t's padded columns are zero);
 * `xs` is scratch of TILE x in floats. A tile is always computed as TILE rows (missing rows
 * are zero and not written back), so a row's arithmetic never depends on its neighbours. */
CLONES
int lora_add(void *y, int y_bf16, int64_t y_stride, const void *x, int x_bf16, int64_t x_stride,
             const int64_t *slot_of_row, const int64_t *order, int64_t n,
             const float *at, int64_t in, int64_t sr, int64_t slices, int64_t rank,
             const float *const *b, const int64_t *out_sizes, float scale, float *xs) {
    if (sr > MAX_SR || sr <= 0 || sr % LANES || slices * rank > sr) return -1;
    float h[TILE][MAX_SR];
    float delta[TILE][OUT_VECTORS * LANES];
    for (int64_t g = 0; g < n;) {
        const int64_t slot = slot_of_row[order[g]];
        if (slot < 0) { g++; continue; }
        int64_t t = 1;
        while (t < TILE && g + t < n && slot_of_row[order[g + t]] == slot) t++;
        const int64_t *rows = order + g;
        for (int64_t r = 0; r < TILE; r++) {
            if (r < t) load_row(xs + r * in, x, x_bf16, rows[r], x_stride, in);
            else memset(xs + r * in, 0, (size_t)in * sizeof(float));
        }

        /* shrink: h[r] = scale * (x[r] @ At[slot]), each lane summed over i in order */
        const float *a = at + slot * in * sr;
        for (int64_t j = 0; j < sr; j += LANES) {
            v16 h0 = {0}, h1 = {0}, h2 = {0}, h3 = {0};
            const float *x0 = xs, *x1 = xs + in, *x2 = xs + 2 * in, *x3 = xs + 3 * in;
            for (int64_t i = 0; i < in; i++) {
                const v16 ai = load16(a + i * sr + j);
                h0 += x0[i] * ai;
                h1 += x1[i] * ai;
                h2 += x2[i] * ai;
                h3 += x3[i] * ai;
            }
            store16(&h[0][j], h0 * scale);
            store16(&h[1][j], h1 * scale);
            store16(&h[2][j], h2 * scale);
            store16(&h[3][j], h3 * scale);
        }

        /* expand: y[r, slice s] += h[r, s's rank] @ B_s[slot], each output summed over k in
         * order; blocks of OUT_VECTORS vectors, then single vectors, then single floats */
        int64_t offset = 0;
        for (int64_t s = 0; s < slices; s++) {
            const int64_t out = out_sizes[s];
            const float *bs = b[s] + slot * rank * out;
            const float *hs[TILE] = {&h[0][s * rank], &h[1][s * rank], &h[2][s * rank],
                                     &h[3][s * rank]};
            int64_t o0 = 0;
            for (; o0 + OUT_VECTORS * LANES <= out; o0 += OUT_VECTORS * LANES) {
                v16 acc[TILE][OUT_VECTORS] = {{{0}}};
                for (int64_t k = 0; k < rank; k++) {
                    const float *bk = bs + k * out + o0;
                    for (int v = 0; v < OUT_VECTORS; v++) {
                        const v16 bv = load16(bk + v * LANES);
                        for (int r = 0; r < TILE; r++) acc[r][v] += hs[r][k] * bv;
                    }
                }
                for (int64_t r = 0; r < t; r++) {
                    for (int v = 0; v < OUT_VECTORS; v++) store16(&delta[r][v * LANES], acc[r][v]);
                    add_row(y, y_bf16, rows[r], y_stride, offset + o0, delta[r],
                            OUT_VECTORS * LANES);
                }
            }
            for (; o0 + LANES <= out; o0 += LANES) {
                v16 acc[TILE] = {{0}};
                for (int64_t k = 0; k < rank; k++) {
                    const v16 bv = load16(bs + k * out + o0);
                    for (int r = 0; r < TILE; r++) acc[r] += hs[r][k] * bv;
                }
                for (int64_t r = 0; r < t; r++) {
                    store16(delta[r], acc[r]);
                    add_row(y, y_bf16, rows[r], y_stride, offset + o0, delta[r], LANES);
                }
            }
            for (; o0 < out; o0++) {
                for (int64_t r = 0; r < t; r++) {
                    float sum = 0.0f;
                    for (int64_t k = 0; k < rank; k++) sum += hs[r][k] * bs[k * out + o0];
                    add_row(y, y_bf16, rows[r], y_stride, offset + o0, &sum, 1);
                }
            }
            offset += out;
        }
        g += t;
    }
    return 0;
}
