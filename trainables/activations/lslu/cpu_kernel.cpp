// LSLU's depthwise site on the CPU in one pass: out = depthwise_conv(clamp(A x + B, lo, hi), weight) + bias
// (lslu_site_forward), and the weight's gradient of the same conv (lslu_site_weight_grad).
//
// Built and loaded by cpu_kernel.py (the system C++ compiler, -O3 -march=native, OpenMP from the process's own runtime,
// which is torch's). No torch headers: plain float pointers, called through ctypes.
//
// Channels go in blocks of V: per image and block, the series of the block's channels is written once into a
// zero-padded buffer laid out (row, column, channel) -- zero outside the map, as the conv pads f(y_n), not x -- and
// each output row is then summed WB pixels at a time: per row of taps, the WB + K - 1 buffer vectors those pixels
// read are loaded once and each tap's weights once, so the K·WB multiply-adds run from registers (K a template
// argument for the kernel sizes LSLU has, n = 1..4). Rows of taps that read only padding are skipped (most of a
// 7×7 kernel on a 4×4 map).
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int V = 8;   // channels per block: one AVX2 register of floats
constexpr int WB = 4;  // output pixels of a row summed together
typedef float vec __attribute__((vector_size(V * sizeof(float))));

inline vec load(const float *p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, vec v) { std::memcpy(p, &v, sizeof v); }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

struct Site {
    const float *x, *weight, *a, *b, *lo, *hi, *bias;
    float *out;
    int64_t C, H, W, K, p, Wp;  // Wp: the buffer's row, the padded map's and WB - 1 zero columns more
    bool channels_last;
};

// The site an entry point is called for: table holds the addresses of weight, a, b, lo, hi and bias, then C and K;
// flags bit 0 is NHWC.
Site site_of(const float *x, float *out, const int64_t *table, int64_t H, int64_t W, int64_t flags) {
    auto at = [table](int i) { return reinterpret_cast<const float *>(table[i]); };
    const int64_t K = table[7], p = K / 2;
    return Site{x, at(0), at(1), at(2), at(3), at(4), at(5), out, table[6], H, W, K, p, W + 2 * p + WB - 1, (flags & 1) != 0};
}

// Bytes for `count` floats, rounded up to the 64 that aligned_alloc needs.
size_t aligned_bytes(int64_t count) { return ((count * sizeof(float) + 63) / 64) * 64; }

// Channels c0 .. c0 + cs of image n of `src` (laid out as the site's x) into `dst`, laid out (row, column, channel),
// row h at dst + ((h + off) * stride + off) * V: f(y_n) into the padded buffer (off = p; its border stays zero), or
// the gradient as it is (series = false, off = 0). In a partial block the lanes past C keep what they held: they
// meet zero weights and are never stored.
void gather(const Site &s, const float *src, float *dst, int64_t n, int64_t c0, int64_t cs, int64_t stride, int64_t off,
            bool series) {
    const int64_t H = s.H, W = s.W;
    if (s.channels_last) {
        const vec va = load(s.a + c0), vb = load(s.b + c0), vlo = load(s.lo + c0), vhi = load(s.hi + c0);
        for (int64_t h = 0; h < H; ++h)
            for (int64_t col = 0; col < W; ++col) {
                const float *from = src + ((n * H + h) * W + col) * s.C + c0;
                vec v = {0};
                if (cs == V) v = load(from);
                else for (int k = 0; k < cs; ++k) v[k] = from[k];
                if (series) {
                    v = va * v + vb;
                    v = v < vlo ? vlo : v;  // comparisons, not fmin/fmax: a NaN stays NaN, as in torch.clamp
                    v = v > vhi ? vhi : v;
                }
                store(dst + ((h + off) * stride + col + off) * V, v);
            }
        return;
    }
    for (int k = 0; k < cs; ++k) {  // NCHW: each channel's rows read in order, written V floats apart
        const float a = s.a[c0 + k], b = s.b[c0 + k], lo = s.lo[c0 + k], hi = s.hi[c0 + k];
        const float *from = src + (n * s.C + c0 + k) * H * W;
        for (int64_t h = 0; h < H; ++h) {
            float *to = dst + ((h + off) * stride + off) * V + k;
            for (int64_t col = 0; col < W; ++col) {
                float v = from[h * W + col];
                if (series) {
                    v = a * v + b;
                    v = v < lo ? lo : v;
                    v = v > hi ? hi : v;
                }
                to[col * V] = v;
            }
        }
    }
}

// acc[q] += Σ over tap rows i0..i1 and all K columns of weight · buffer, for the WB pixels from `row0`.
template <int K>
inline void taps(const float *row0, const float *w, int64_t i0, int64_t i1, int64_t Wp, vec *acc) {
    for (int64_t i = i0; i < i1; ++i) {
        const float *row = row0 + i * Wp * V;
        vec in[WB + K - 1];
        for (int t = 0; t < WB + K - 1; ++t) in[t] = load(row + t * V);
        for (int j = 0; j < K; ++j) {
            const vec wv = load(w + (i * K + j) * V);
            for (int q = 0; q < WB; ++q) acc[q] += wv * in[j + q];
        }
    }
}

void taps_any(const float *row0, const float *w, int64_t i0, int64_t i1, int64_t Wp, int64_t K, vec *acc) {
    for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < K; ++j) {
            const vec wv = load(w + (i * K + j) * V);
            for (int q = 0; q < WB; ++q) acc[q] += wv * load(row0 + (i * Wp + j + q) * V);
        }
}

// The block's output rows from the filled buffer.
void convolve(const Site &s, const float *pad, int64_t n, int64_t c0, int64_t cs) {
    const int64_t H = s.H, W = s.W, K = s.K;
    const float *w = s.weight + (c0 / V) * K * K * V;
    const vec vbias = load(s.bias + c0);
    for (int64_t h = 0; h < H; ++h) {
        const int64_t i0 = imax(0, s.p - h), i1 = imin(K, H + s.p - h);  // rows of taps that reach the map
        for (int64_t c = 0; c < W; c += WB) {
            vec acc[WB];
            for (int q = 0; q < WB; ++q) acc[q] = vbias;
            const float *row0 = pad + (h * s.Wp + c) * V;
            switch (K) {
                case 3: taps<3>(row0, w, i0, i1, s.Wp, acc); break;
                case 5: taps<5>(row0, w, i0, i1, s.Wp, acc); break;
                case 7: taps<7>(row0, w, i0, i1, s.Wp, acc); break;
                case 9: taps<9>(row0, w, i0, i1, s.Wp, acc); break;
                default: taps_any(row0, w, i0, i1, s.Wp, K, acc);
            }
            const int64_t nb = imin(WB, W - c);
            if (s.channels_last) {
                for (int q = 0; q < nb; ++q) {
                    float *dst = s.out + ((n * H + h) * W + c + q) * s.C + c0;
                    if (cs == V) store(dst, acc[q]);
                    else for (int k = 0; k < cs; ++k) dst[k] = acc[q][k];
                }
            } else {  // NCHW: per channel, the nb pixels side by side
                float *dst = s.out + ((n * s.C + c0) * H + h) * W + c;
                for (int k = 0; k < cs; ++k)
                    for (int q = 0; q < nb; ++q) dst[k * H * W + q] = acc[q][k];
            }
        }
    }
}

// dw[i][j] += Σ over the map of g · the buffer at the tap's offset, for one image: per row of taps i, its K
// accumulators stay in registers while the rows of g that meet the map pass, WB pixels at a time.
template <int K>
void weight_taps(const float *pad, const float *grad, int64_t H, int64_t W, int64_t p, int64_t Wp, int64_t Wg, vec *dw) {
    for (int64_t i = 0; i < K; ++i) {
        vec acc[K];
        for (int j = 0; j < K; ++j) acc[j] = dw[i * K + j];
        for (int64_t h = imax(0, p - i); h < imin(H, H + p - i); ++h) {  // rows whose tap row i reads the map
            const float *in = pad + (h + i) * Wp * V, *g = grad + h * Wg * V;
            for (int64_t c = 0; c < W; c += WB) {
                vec gq[WB];
                for (int q = 0; q < WB; ++q) gq[q] = load(g + (c + q) * V);
                for (int j = 0; j < K; ++j)
                    for (int q = 0; q < WB; ++q) acc[j] += gq[q] * load(in + (c + q + j) * V);
            }
        }
        for (int j = 0; j < K; ++j) dw[i * K + j] = acc[j];
    }
}

void weight_taps_any(const float *pad, const float *grad, int64_t H, int64_t W, int64_t p, int64_t Wp, int64_t Wg,
                     int64_t K, vec *dw) {
    for (int64_t i = 0; i < K; ++i)
        for (int64_t h = imax(0, p - i); h < imin(H, H + p - i); ++h)
            for (int64_t c = 0; c < W; c += WB)
                for (int64_t j = 0; j < K; ++j)
                    for (int q = 0; q < WB; ++q)
                        dw[i * K + j] += load(grad + (h * Wg + c + q) * V) * load(pad + ((h + i) * Wp + c + q + j) * V);
}

}  // namespace

extern "C" {

// x, out: (N, C, H, W) float32, NCHW or NHWC, dense. table: the addresses of weight, a, b, lo, hi and bias, then C
// and K. weight: (Cb, K, K, V) with Cb = ceil(C / V), tap (i, j) of channel b·V + k at [b][i][j][k], zero past C;
// a, b, lo, hi, bias: (Cb · V,) per channel (hi = +inf where unbounded). flags: bit 0 NHWC, the bits above it the
// number of threads. Returns 0, or 1 when a thread's buffer could not be allocated.
int lslu_site_forward(const float *x, float *out, const int64_t *table, int64_t N, int64_t H, int64_t W, int64_t flags) {
    const Site s = site_of(x, out, table, H, W, flags);
    const int64_t C = s.C, Cb = (C + V - 1) / V;
    const size_t bytes = aligned_bytes((H + 2 * s.p) * s.Wp * V);
    int failed = 0;
#pragma omp parallel num_threads(static_cast<int>(flags >> 1))
    {
        float *pad = static_cast<float *>(std::aligned_alloc(64, bytes));
        if (!pad) {
#pragma omp atomic write
            failed = 1;
        } else {
            std::memset(pad, 0, bytes);  // the border stays zero: each block writes only the interior
        }
#pragma omp for schedule(static)
        for (int64_t job = 0; job < N * Cb; ++job) {
            if (!pad) continue;
            const int64_t n = job / Cb, c0 = (job % Cb) * V, cs = imin(V, C - c0);
            gather(s, x, pad, n, c0, cs, s.Wp, s.p, true);
            convolve(s, pad, n, c0, cs);
        }
        std::free(pad);
    }
    return failed;
}

// dw = the weight's gradient, (C, K, K) float32, of out = conv(f(y_n)) for the gradient g of out: x and g as in
// lslu_site_forward (the same layout), table as there (its weight and bias unused). Threads take channel blocks, so
// each sums its own over the images. Returns 0, or 1 when a thread's buffers could not be allocated.
int lslu_site_weight_grad(const float *x, const float *g, float *dw, const int64_t *table, int64_t N, int64_t H, int64_t W,
                          int64_t flags) {
    const Site s = site_of(x, nullptr, table, H, W, flags);
    const int64_t C = s.C, K = s.K, p = s.p, Wp = s.Wp, Wg = W + WB - 1, Cb = (C + V - 1) / V;
    const size_t pad_bytes = aligned_bytes((H + 2 * p) * Wp * V), grad_bytes = aligned_bytes(H * Wg * V);
    const size_t acc_bytes = aligned_bytes(K * K * V);
    int failed = 0;
#pragma omp parallel num_threads(static_cast<int>(flags >> 1))
    {
        float *pad = static_cast<float *>(std::aligned_alloc(64, pad_bytes));
        float *grad = static_cast<float *>(std::aligned_alloc(64, grad_bytes));
        vec *acc = static_cast<vec *>(std::aligned_alloc(64, acc_bytes));
        const bool ok = pad && grad && acc;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else {
            std::memset(pad, 0, pad_bytes);  // borders, and g's WB - 1 columns past each row, stay zero
            std::memset(grad, 0, grad_bytes);
        }
#pragma omp for schedule(static)
        for (int64_t block = 0; block < Cb; ++block) {
            if (!ok) continue;
            const int64_t c0 = block * V, cs = imin(V, C - c0);
            for (int64_t t = 0; t < K * K; ++t) acc[t] = vec{0};
            for (int64_t n = 0; n < N; ++n) {
                gather(s, x, pad, n, c0, cs, Wp, p, true);
                gather(s, g, grad, n, c0, cs, Wg, 0, false);
                switch (K) {
                    case 3: weight_taps<3>(pad, grad, H, W, p, Wp, Wg, acc); break;
                    case 5: weight_taps<5>(pad, grad, H, W, p, Wp, Wg, acc); break;
                    case 7: weight_taps<7>(pad, grad, H, W, p, Wp, Wg, acc); break;
                    case 9: weight_taps<9>(pad, grad, H, W, p, Wp, Wg, acc); break;
                    default: weight_taps_any(pad, grad, H, W, p, Wp, Wg, K, acc);
                }
            }
            for (int k = 0; k < cs; ++k)
                for (int64_t t = 0; t < K * K; ++t) dw[(c0 + k) * K * K + t] = acc[t][k];
        }
        std::free(pad);
        std::free(grad);
        std::free(acc);
    }
    return failed;
}

}
