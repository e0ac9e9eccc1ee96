/* CPU float32 kernels for the csr backend (see dst/kernels/native.py, which compiles this file
 * on first use and calls it through ctypes).
 *
 * Layout: everything is "feature-major": a dense operand is a batch of row-major (K, M) matrices
 * whose rows are the features and whose columns are the samples (or pixels).  A sparse row then
 * touches whole contiguous rows of the dense operand, which vectorizes along M.
 *
 *   dst_spmm:  Y[b] = S @ B[b]         S: (R, K) in CSR (crow, col, val[perm[k]] or val[k])
 *   dst_sddmm: out[o(k)] = sum_b <A[b][row(k)], B[b][col(k)]>  (A @ B^T sampled at S's pattern;
 *              o(k) = operm[k] or k: the gradient is written in the caller's values order)
 *
 * and helpers of the dense format and the engine's updates: dst_mask_zero (a gradient kept at
 * the active weights), dst_fill_f32 / dst_fill_u8 (a commit's writes), dst_nonzero_count and
 * dst_nonzero_write (the active set of a mask) and dst_unique_unblocked (the rejection step of
 * the growth sampler).
 *
 * With an offset array, entry k reads B's row col[k] starting off[k] elements later (or earlier):
 * a k x k convolution on zero-padded, row-flattened feature maps is then the same SpMM, with
 * col = input channel and off = kh * padded_width + kw (see dst/kernels/conv.py).
 *
 * Threads come from OpenMP; a process that has loaded torch shares torch's libgomp (same soname).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4))); /* unaligned access */

#define TILE 64 /* columns per register tile: 8 vectors of 8 floats */

static inline v8 load8(const float *p) { return *(const v8u *)p; }
static inline void store8(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 splat8(float x) { return (v8){x, x, x, x, x, x, x, x}; }

/* y[0:TILE] = sum_k v_k * B[col_k][m0:m0+TILE], accumulators kept in registers. */
#define BROW(k) (b + (int64_t)col[k] * ldb + (off ? off[k] : 0))

static inline void row_tile(const int32_t *col, const int64_t *off, const float *val,
                            const int64_t *perm, int64_t lo, int64_t hi, const float *b,
                            int64_t ldb, float *y) {
    v8 a0 = splat8(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t k = lo; k < hi; ++k) {
        const v8 v = splat8(perm ? val[perm[k]] : val[k]);
        const float *p = BROW(k);
        a0 += v * load8(p);      a1 += v * load8(p + 8);
        a2 += v * load8(p + 16); a3 += v * load8(p + 24);
        a4 += v * load8(p + 32); a5 += v * load8(p + 40);
        a6 += v * load8(p + 48); a7 += v * load8(p + 56);
    }
    store8(y, a0);      store8(y + 8, a1);  store8(y + 16, a2); store8(y + 24, a3);
    store8(y + 32, a4); store8(y + 40, a5); store8(y + 48, a6); store8(y + 56, a7);
}

/* y[0:w] for a last, partial tile (w < TILE): 8 columns at a time, then scalars. */
static inline void row_rest(const int32_t *col, const int64_t *off, const float *val,
                            const int64_t *perm, int64_t lo, int64_t hi, const float *b,
                            int64_t ldb, float *y, int64_t w) {
    int64_t m = 0;
    for (; m + 8 <= w; m += 8) {
        v8 acc = splat8(0);
        for (int64_t k = lo; k < hi; ++k)
            acc += splat8(perm ? val[perm[k]] : val[k]) * load8(BROW(k) + m);
        store8(y + m, acc);
    }
    for (; m < w; ++m) {
        float acc = 0;
        for (int64_t k = lo; k < hi; ++k)
            acc += (perm ? val[perm[k]] : val[k]) * BROW(k)[m];
        y[m] = acc;
    }
}

void dst_spmm(int64_t nbatch, int64_t rows, int64_t m, const int32_t *crow, const int32_t *col,
              const int64_t *off, const float *val, const int64_t *perm, const float *b,
              int64_t ldb, int64_t sb, float *y, int64_t ldy, int64_t sy, int nthreads) {
#pragma omp parallel for collapse(2) schedule(dynamic, 4) num_threads(nthreads)
    for (int64_t n = 0; n < nbatch; ++n) {
        for (int64_t r = 0; r < rows; ++r) {
            const float *bn = b + n * sb;
            float *yr = y + n * sy + r * ldy;
            const int64_t lo = crow[r], hi = crow[r + 1];
            int64_t m0 = 0;
            for (; m0 + TILE <= m; m0 += TILE)
                row_tile(col, off, val, perm, lo, hi, bn + m0, ldb, yr + m0);
            if (m0 < m)
                row_rest(col, off, val, perm, lo, hi, bn + m0, ldb, yr + m0, m - m0);
        }
    }
}

typedef int32_t v8i __attribute__((vector_size(32)));

#if defined(__clang__)
#define SHUFFLE8(v, a, b, c, d, e, f, g, h) __builtin_shufflevector(v, v, a, b, c, d, e, f, g, h)
#else
#define SHUFFLE8(v, a, b, c, d, e, f, g, h) __builtin_shuffle(v, (v8i){a, b, c, d, e, f, g, h})
#endif

static inline float hsum8(v8 v) {
    v += SHUFFLE8(v, 4, 5, 6, 7, 0, 1, 2, 3);
    v += SHUFFLE8(v, 2, 3, 0, 1, 6, 7, 4, 5);
    v += SHUFFLE8(v, 1, 0, 3, 2, 5, 4, 7, 6);
    return v[0];
}

static inline float dot(const float *x, const float *z, int64_t m) {
    v8 a0 = splat8(0), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= m; i += 32) {
        a0 += load8(x + i) * load8(z + i);           a1 += load8(x + i + 8) * load8(z + i + 8);
        a2 += load8(x + i + 16) * load8(z + i + 16); a3 += load8(x + i + 24) * load8(z + i + 24);
    }
    for (; i + 8 <= m; i += 8)
        a0 += load8(x + i) * load8(z + i);
    float s = hsum8((a0 + a1) + (a2 + a3));
    for (; i < m; ++i)
        s += x[i] * z[i];
    return s;
}

/* acc[k - lo] += <a[0:TILE], B[col_k][0:TILE]> for the entries of one row; a in registers. */
static inline void sddmm_tile(const int32_t *col, const int64_t *off, int64_t lo, int64_t hi,
                              const float *a, const float *b, int64_t ldb, float *acc) {
    const v8 x0 = load8(a), x1 = load8(a + 8), x2 = load8(a + 16), x3 = load8(a + 24);
    const v8 x4 = load8(a + 32), x5 = load8(a + 40), x6 = load8(a + 48), x7 = load8(a + 56);
    for (int64_t k = lo; k < hi; ++k) {
        const float *p = BROW(k);
        v8 s0 = x0 * load8(p), s1 = x1 * load8(p + 8), s2 = x2 * load8(p + 16);
        v8 s3 = x3 * load8(p + 24);
        s0 += x4 * load8(p + 32); s1 += x5 * load8(p + 40); s2 += x6 * load8(p + 48);
        s3 += x7 * load8(p + 56);
        const float s = hsum8((s0 + s1) + (s2 + s3));
        acc[k - lo] += s;
    }
}

void dst_sddmm(int64_t nbatch, int64_t rows, int64_t m, const int32_t *crow, const int32_t *col,
               const int64_t *off, const int64_t *operm, const float *a, int64_t lda, int64_t sa,
               const float *b_all, int64_t ldb, int64_t sb, float *out, int nthreads) {
    const int64_t nnz = crow[rows];
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < nnz; ++k)
            out[k] = 0;
        /* Batch entries one after the other (all rows of entry n, then n + 1): the rows share
         * entry n's operands while they are in cache.  The barrier closing each `omp for` orders
         * the += of successive entries. */
        for (int64_t n = 0; n < nbatch; ++n) {
            const float *b = b_all + n * sb;
#pragma omp for schedule(dynamic, 4)
            for (int64_t r = 0; r < rows; ++r) {
                const float *an = a + n * sa + r * lda;
                float acc[256];
                for (int64_t c0 = crow[r]; c0 < crow[r + 1]; c0 += 256) { /* chunks of a row */
                    const int64_t c1 = c0 + 256 < crow[r + 1] ? c0 + 256 : crow[r + 1];
                    for (int64_t k = c0; k < c1; ++k)
                        acc[k - c0] = 0;
                    int64_t m0 = 0;
                    for (; m0 + TILE <= m; m0 += TILE)
                        sddmm_tile(col, off, c0, c1, an + m0, b + m0, ldb, acc);
                    if (m0 < m)
                        for (int64_t k = c0; k < c1; ++k)
                            acc[k - c0] += dot(an + m0, BROW(k) + m0, m - m0);
                    for (int64_t k = c0; k < c1; ++k)
                        out[operm ? operm[k] : k] += acc[k - c0];
                }
            }
        }
    }
}

/* g[i] = 0 wherever mask[i] == 0: a dense-format layer's weight gradient kept at its active
 * weights, in place (g and mask share one layout). Chunks of 64 KiB of floats per task. */
void dst_mask_zero(int64_t n, float *g, const uint8_t *mask, int nthreads) {
    const int64_t chunk = 16384;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (n > 4 * chunk)
    for (int64_t c = 0; c < n; c += chunk) {
        const int64_t hi = c + chunk < n ? c + chunk : n;
        for (int64_t i = c; i < hi; ++i)
            g[i] = mask[i] ? g[i] : 0.0f;
    }
}

/* t[idx[k]] = v for k < n, t of numel elements (float32 or bytes): the commit of an update
 * (pruned and grown weights, their optimizer state and mask entries). Independent random
 * stores, spread over the threads. Returns -1, writing nothing, if an index is outside
 * [0, numel). */
static int indices_in_range(int64_t n, const int64_t *idx, int64_t numel, int nthreads) {
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (n > 65536) reduction(| : bad)
    for (int64_t k = 0; k < n; ++k)
        bad |= idx[k] < 0 || idx[k] >= numel;
    return !bad;
}

#define DEFINE_FILL(name, T, V)                                                         \
    int64_t name(int64_t n, const int64_t *idx, T *t, V v, int64_t numel, int nthreads) {  \
        if (!indices_in_range(n, idx, numel, nthreads))                                    \
            return -1;                                                                     \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads) if (n > 16384)")   \
        for (int64_t k = 0; k < n; ++k)                                                    \
            t[idx[k]] = (T)v;                                                              \
        return 0;                                                                          \
    }

DEFINE_FILL(dst_fill_f32, float, float)
DEFINE_FILL(dst_fill_u8, uint8_t, int)

/* Bit 8k of the result is set when byte k of w (little-endian) is non-zero. */
static inline uint64_t byte_flags(uint64_t w) {
    w |= w >> 4;
    w |= w >> 2;
    w |= w >> 1;
    return w & 0x0101010101010101ULL;
}

static inline uint64_t load_word(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define DST_WORDS 0 /* byte k of a word is not bits 8k..8k+7: byte at a time */
#else
#define DST_WORDS 1
#endif

#define NZ_CHUNK 65536 /* bytes of mask per task of dst_nonzero_count / dst_nonzero_write */

/* The active set of a mask, in two passes over fixed chunks of NZ_CHUNK bytes (so the output
 * never depends on the thread count): dst_nonzero_count writes base[0:nchunks+1], the prefix
 * sums of the chunks' non-zero byte counts, and returns the total; dst_nonzero_write then
 * writes the flat indices of the non-zero bytes, ascending, chunk c from out[base[c]] on, and
 * returns 0, or -1 if a chunk's count no longer matched (the mask changed in between; it never
 * writes past base[c + 1]). Eight bytes at a time (a word's non-zero bytes as bits); the write
 * pass takes 64 bytes at once and stores one index per set bit. */
int64_t dst_nonzero_count(int64_t n, const uint8_t *mask, int64_t *base, int nthreads) {
    const int64_t nchunks = (n + NZ_CHUNK - 1) / NZ_CHUNK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunks > 4)
    for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t lo = c * NZ_CHUNK, hi = lo + NZ_CHUNK < n ? lo + NZ_CHUNK : n;
        int64_t i = lo, count = 0;
        if (DST_WORDS)
            for (; i + 8 <= hi; i += 8)
                count += __builtin_popcountll(byte_flags(load_word(mask + i)));
        for (; i < hi; ++i)
            count += mask[i] != 0;
        base[c + 1] = count;
    }
    base[0] = 0;
    for (int64_t c = 0; c < nchunks; ++c)
        base[c + 1] += base[c];
    return base[nchunks];
}

/* Bit k of the result is set when byte k of p[0:64] is non-zero. */
static inline uint64_t bits64(const uint8_t *p) {
    uint64_t r = 0;
    for (int w = 0; w < 8; ++w)
        r |= ((byte_flags(load_word(p + 8 * w)) * 0x0102040810204080ULL) >> 56) << (8 * w);
    return r;
}

int64_t dst_nonzero_write(int64_t n, const uint8_t *mask, const int64_t *base, int64_t *out,
                          int nthreads) {
    const int64_t nchunks = (n + NZ_CHUNK - 1) / NZ_CHUNK;
    int changed = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunks > 4) \
    reduction(| : changed)
    for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t lo = c * NZ_CHUNK, hi = lo + NZ_CHUNK < n ? lo + NZ_CHUNK : n;
        const int64_t end = base[c + 1];
        int64_t i = lo, j = base[c];
        if (DST_WORDS) /* 64 bytes at a time: their set bits, then one store per set bit */
            for (; i + 64 <= hi; i += 64)
                for (uint64_t f = bits64(mask + i); f; f &= f - 1) {
                    if (j < end)
                        out[j] = i + __builtin_ctzll(f);
                    ++j;
                }
        for (; i < hi; ++i)
            if (mask[i]) {
                if (j < end)
                    out[j] = i;
                ++j;
            }
        changed |= j != end;
    }
    return changed ? -1 : 0;
}

/* Sorted distinct draws[k] (each in [0, numel)) whose byte of blocked is 0, written to out
 * (room for n); returns their count, or -1 if a draw is out of range. bits: numel bits,
 * zeroed by the caller. The sampler's rejection step (sample_free): one pass, no sort. */
int64_t dst_unique_unblocked(int64_t n, const int64_t *draws, const uint8_t *blocked,
                             int64_t numel, uint64_t *bits, int64_t *out) {
    for (int64_t k = 0; k < n; ++k) {
        const int64_t d = draws[k];
        if (d < 0 || d >= numel)
            return -1;
        if (!blocked[d])
            bits[d >> 6] |= (uint64_t)1 << (d & 63);
    }
    int64_t j = 0;
    for (int64_t w = 0; w < (numel + 63) >> 6; ++w)
        for (uint64_t b = bits[w]; b; b &= b - 1)
            out[j++] = (w << 6) + __builtin_ctzll(b);
    return j;
}
