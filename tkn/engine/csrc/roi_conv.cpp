// Exact per-channel ROI convolution for frozen target layers (float32, CPU).
//
// The output channels are cut into groups of VW channels (one SIMD vector, VW = 16 with AVX-512, else
// 8); the caller orders them so that the channels of a group have nearby ROIs. For every group and
// every output row the caller gives the column range that the union of the group's ROIs covers on
// that row; only that range is convolved (lanes whose ROI does not hold a position get window·mask 0
// there, so they come out as their fill value). A register-blocked micro-kernel keeps up to NP_MAX
// output positions x VW channels in vector accumulators and reads the channels_last input directly
// (no im2col): the K loop runs over (ky, kx, input channel), broadcasting one input value per position
// and loading one packed weight vector per step. Zero padding is read from a zero row, so any stride,
// dilation and padding work.
//
// Epilogue, per position and lane: (acc + bias) * window_mask, then * scale + shift, then ReLU, then a
// pool x pool max-pool with stride pool; written once into the channels_last output, whose other
// positions hold each channel's fill value (its epilogue of 0). Positions of a pool window outside
// every computed range also count as the fill value. With a residual (pool 1 only), the residual's
// value is added after the affine map and the ReLU comes last: relu(affine + residual), at computed
// positions and at the others (fill + residual).
//
// Input sparsity: given a box per input channel outside which that channel is zero, each chunk of
// positions reads only the input channels whose box meets its window on each kernel row (exact: the
// skipped products are products with zeros).
//
// Plain C ABI (loaded with ctypes); parallelised with OpenMP over (group, pooled row, sample) items,
// dynamically scheduled, consecutive items sharing a group's weights.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __AVX512F__
#define TKN_VW 16
#else
#define TKN_VW 8
#endif

static const int VW = TKN_VW;
typedef float vf __attribute__((vector_size(TKN_VW * 4)));
typedef float vfu __attribute__((vector_size(TKN_VW * 4), aligned(4)));

static inline vf loadu(const float* p) { return *reinterpret_cast<const vfu*>(p); }
static inline void storeu(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// The largest number of positions a micro-kernel call handles (12 accumulators: one thread ran the 256->256
// 5x5 layer of TKN6 at 82% of oneDNN's dense rate, against 63% with 8; 16 was no faster).
static const int NP_MAX = 12;

struct Geometry {
    int N, H, W, Cin;          // input (channels_last)
    int kh, kw, sy, sx, dy, dx, pt, pl;
    int Ho, Wo, pool, Hp, Wp, C;  // conv output, pooled output, output channels
};

// The largest fused max-pool (MAX_POOL in tkn/engine/native.py).
static const int TKN_MAX_POOL = 8;
// The most kernel rows the channel-group strategy handles (its per-row pointer arrays).
static const int TKN_MAX_KH = 64;

// What the entry points return for arguments they refuse (0: done). tkn/engine/native.py maps each code to a
// message (ERROR_CODES there); a new code goes into both.
enum {
    TKN_E_SIZE = -1,        // a size below 1 (H, W, Cin, kh, kw, Ho, Wo, C), a negative N, G or S, kh > TKN_MAX_KH
    TKN_E_TOO_LARGE = -2,   // sizes whose offsets overflow the kernel's index types
    TKN_E_RESIDUAL = -3,    // a residual with pool != 1
    TKN_E_LANES = -4,       // batch lanes not a positive multiple of the vector width
    TKN_E_POOLED = -5,      // pooled size not (Ho / pool, Wo / pool)
    TKN_E_TAPS = -6,        // more than 4096 kernel taps
    TKN_E_REDUCE_CIN = -7,  // input channels not a multiple of the vector width ("reduce")
    TKN_E_NULL = -8,        // a required pointer is null
    TKN_E_POOL = -9,        // pool outside 1..TKN_MAX_POOL
    TKN_E_STEP = -10,       // a stride or dilation below 1, or a negative padding
    TKN_E_RANGE = -11,      // a column range, ROI or set box outside the conv map
    TKN_E_CHANNEL = -12,    // a channel index out of range (lane index, CSR lists), a channel in two sets
    TKN_E_CSR = -13,        // CSR offsets not 0-based, non-decreasing and ending at the list's length
};

// Reads dims (18 int32: N, H, W, Cin, kh, kw, sy, sx, dy, dx, pt, pl, Ho, Wo, pool, Hp, Wp, C) into g and checks
// what every entry point needs: positive sizes, steps and pool, the pooled size, and index arithmetic that
// stays within int (every input row and column a position's window can reach, every map offset).
static int read_geometry(const int32_t* dims, Geometry& g) {
    if (!dims) return TKN_E_NULL;
    g.N = dims[0]; g.H = dims[1]; g.W = dims[2]; g.Cin = dims[3];
    g.kh = dims[4]; g.kw = dims[5]; g.sy = dims[6]; g.sx = dims[7]; g.dy = dims[8]; g.dx = dims[9];
    g.pt = dims[10]; g.pl = dims[11]; g.Ho = dims[12]; g.Wo = dims[13]; g.pool = dims[14];
    g.Hp = dims[15]; g.Wp = dims[16]; g.C = dims[17];
    if (g.N < 0 || g.H < 1 || g.W < 1 || g.Cin < 1 || g.kh < 1 || g.kw < 1 || g.Ho < 1 || g.Wo < 1 || g.C < 1)
        return TKN_E_SIZE;
    if (g.sy < 1 || g.sx < 1 || g.dy < 1 || g.dx < 1 || g.pt < 0 || g.pl < 0) return TKN_E_STEP;
    if (g.pool < 1 || g.pool > TKN_MAX_POOL) return TKN_E_POOL;
    if (g.Hp != g.Ho / g.pool || g.Wp != g.Wo / g.pool) return TKN_E_POOLED;
    const int64_t lim = INT32_MAX;
    const int64_t reach_y = (int64_t)(g.Ho - 1) * g.sy + (int64_t)(g.kh - 1) * g.dy + g.pt + g.H;
    const int64_t reach_x = (int64_t)(g.Wo - 1) * g.sx + (int64_t)(g.kw - 1) * g.dx + g.pl + g.W;
    if (reach_y >= lim || reach_x >= lim || (int64_t)g.H * g.W * g.Cin >= lim || (int64_t)g.Ho * g.Wo * g.C >= lim
        || (int64_t)g.kh * g.kw * g.Cin >= lim || (int64_t)g.N * g.H * g.W * g.Cin >= ((int64_t)1 << 60)
        || (int64_t)g.N * g.Hp * g.Wp * g.C >= ((int64_t)1 << 60))
        return TKN_E_TOO_LARGE;
    return 0;
}

// acc[p] += sum over (ky, kx, ci) of w[ky][kx][ci][:] * x[n, iy(ky), ix(p, kx), ci]
template <int NP, bool LIST>
static inline void accumulate(vf* acc, const float* const* rows, const int* ok_rows, int nrows_k,
                              const float* wg, const Geometry& g, int x0, const float* zeros,
                              const int* const* lists, const int* counts) {
    for (int ky = 0; ky < nrows_k; ++ky) {
        if (!ok_rows[ky]) continue;
        const float* xrow = rows[ky];
        const int* list = LIST ? lists[ky] : nullptr;
        const int cnt = LIST ? counts[ky] : g.Cin;
        if (cnt == 0) continue;
        for (int kx = 0; kx < g.kw; ++kx) {
            const float* xp[NP];
            const int ix0 = x0 * g.sx - g.pl + kx * g.dx;
            for (int p = 0; p < NP; ++p) {
                const int ix = ix0 + p * g.sx;
                xp[p] = (ix >= 0 && ix < g.W) ? xrow + (int64_t)ix * g.Cin : zeros;
            }
            const float* wk = wg + ((int64_t)ky * g.Cin * g.kw + kx) * VW;  // + ci * kw * VW
            vf a[NP];
            for (int p = 0; p < NP; ++p) a[p] = acc[p];
            if (LIST) {
                for (int j = 0; j < cnt; ++j) {
                    const int ci = list[j];
                    const vf w = loadu(wk + (int64_t)ci * g.kw * VW);
                    for (int p = 0; p < NP; ++p) a[p] += w * xp[p][ci];
                }
            } else {
                for (int ci = 0; ci < cnt; ++ci) {
                    const vf w = loadu(wk + (int64_t)ci * g.kw * VW);
                    for (int p = 0; p < NP; ++p) a[p] += w * xp[p][ci];
                }
            }
            for (int p = 0; p < NP; ++p) acc[p] = a[p];
        }
    }
}

// The same for unit stride and dilation along x and a chunk inside the input's columns, with the input
// values reused across kx: per (ky, ci) the KW weight vectors stay in registers and each of the
// NP + KW - 1 input values is broadcast once for up to KW products (a third of the loads of the loop
// above). With channel lists (input sparsity) it ran TKN6's second layer 6% faster than the loop above;
// over all input channels 4% slower, so it is used with lists only.
template <int NP, int KW, bool LIST>
static inline void accumulate_slide(vf* acc, const float* const* rows, const int* ok_rows, int nrows_k,
                                    const float* wg, const Geometry& g, int ix0, const int* const* lists,
                                    const int* counts) {
    vf a[NP];
    for (int p = 0; p < NP; ++p) a[p] = acc[p];
    for (int ky = 0; ky < nrows_k; ++ky) {
        if (!ok_rows[ky]) continue;
        const float* xp[NP + KW - 1];
        for (int j = 0; j < NP + KW - 1; ++j) xp[j] = rows[ky] + (int64_t)(ix0 + j) * g.Cin;
        const float* wk = wg + (int64_t)ky * g.Cin * KW * VW;
        const int* list = LIST ? lists[ky] : nullptr;
        const int cnt = LIST ? counts[ky] : g.Cin;
        for (int jj = 0; jj < cnt; ++jj) {
            const int ci = LIST ? list[jj] : jj;
            const float* w = wk + (int64_t)ci * KW * VW;
            vf wv[KW];
#pragma GCC unroll 8
            for (int kx = 0; kx < KW; ++kx) wv[kx] = loadu(w + kx * VW);
#pragma GCC unroll 32
            for (int j = 0; j < NP + KW - 1; ++j) {
                const vf xb = vf{} + xp[j][ci];
#pragma GCC unroll 8
                for (int kx = 0; kx < KW; ++kx) {
                    const int p = j - kx;
                    if (p >= 0 && p < NP) a[p] += wv[kx] * xb;
                }
            }
        }
    }
    for (int p = 0; p < NP; ++p) acc[p] = a[p];
}

template <int KW, bool LIST>
static bool slide_n(int np, vf* acc, const float* const* rows, const int* ok_rows, int nrows_k, const float* wg,
                    const Geometry& g, int ix0, const int* const* lists, const int* counts) {
    switch (np) {
#define TKN_CASE(K) \
    case K: accumulate_slide<K, KW, LIST>(acc, rows, ok_rows, nrows_k, wg, g, ix0, lists, counts); return true;
        TKN_CASE(4) TKN_CASE(5) TKN_CASE(6) TKN_CASE(7) TKN_CASE(8) TKN_CASE(9) TKN_CASE(10) TKN_CASE(11)
        TKN_CASE(12)
#undef TKN_CASE
        default: return false;
    }
}

// Runs the sliding kernel when it applies (unit stride and dilation along x, kw of 3 or 5, at least 4
// positions, the chunk inside the input's columns); false otherwise.
template <bool LIST>
static bool try_slide(int np, vf* acc, const float* const* rows, const int* ok_rows, const float* wg,
                      const Geometry& g, int ix0, bool inside_x, const int* const* lists, const int* counts) {
    if (!inside_x || g.sx != 1 || g.dx != 1) return false;
    if (g.kw == 5) return slide_n<5, LIST>(np, acc, rows, ok_rows, g.kh, wg, g, ix0, lists, counts);
    if (g.kw == 3) return slide_n<3, LIST>(np, acc, rows, ok_rows, g.kh, wg, g, ix0, lists, counts);
    return false;
}

// The same for a chunk whose whole window lies inside the input (no bounds, no channel lists): one flat loop
// over k = (ky, kx, ci), the input read at koff[k] from each position's window origin. Twice as fast as the
// nested loops when C_in is small (TKN6's first layer, C_in = 1).
template <int NP>
static inline void accumulate_flat(vf* acc, const float* origin, int64_t pstep, const int32_t* koff, const float* wg,
                                   int K) {
    const float* xp[NP];
    for (int p = 0; p < NP; ++p) xp[p] = origin + p * pstep;
    vf a[NP];
    for (int p = 0; p < NP; ++p) a[p] = acc[p];
    for (int k = 0; k < K; ++k) {
        const vf w = loadu(wg + (int64_t)k * VW);
        const int32_t o = koff[k];
        for (int p = 0; p < NP; ++p) a[p] += w * xp[p][o];
    }
    for (int p = 0; p < NP; ++p) acc[p] = a[p];
}

static void accumulate_flat_n(int np, vf* acc, const float* origin, int64_t pstep, const int32_t* koff,
                              const float* wg, int K) {
    switch (np) {
#define TKN_CASE(K_) \
    case K_: accumulate_flat<K_>(acc, origin, pstep, koff, wg, K); break;
        TKN_CASE(1) TKN_CASE(2) TKN_CASE(3) TKN_CASE(4) TKN_CASE(5) TKN_CASE(6) TKN_CASE(7) TKN_CASE(8)
        TKN_CASE(9) TKN_CASE(10) TKN_CASE(11) TKN_CASE(12)
#undef TKN_CASE
        default: break;
    }
}

template <bool LIST>
static void accumulate_n(int np, vf* acc, const float* const* rows, const int* ok_rows, int nrows_k,
                         const float* wg, const Geometry& g, int x0, const float* zeros,
                         const int* const* lists, const int* counts) {
    switch (np) {
#define TKN_CASE(K) \
    case K: accumulate<K, LIST>(acc, rows, ok_rows, nrows_k, wg, g, x0, zeros, lists, counts); break;
        TKN_CASE(1) TKN_CASE(2) TKN_CASE(3) TKN_CASE(4) TKN_CASE(5) TKN_CASE(6) TKN_CASE(7) TKN_CASE(8)
        TKN_CASE(9) TKN_CASE(10) TKN_CASE(11) TKN_CASE(12)
#undef TKN_CASE
        default: break;
    }
}

// ---- Batch lanes: exact per-position channel sets, exact input sparsity ---------------------------------
//
// The other strategy above computes VW output channels per vector, so a group's lanes cover the union of
// its channels' ROIs; learned ROIs are small and scattered, and that union is several times the ROIs.
// Here the lanes hold VW samples of the batch instead. At every conv position p the kernel visits exactly
// the channels whose ROI holds p (CSR list), and for each of them exactly the input values that can be
// non-zero: per tap, the input channels whose support box holds that input pixel (CSR list per input
// pixel). ROIs and supports are the same for every sample, so a whole vector of samples shares each list
// entry: one input vector load feeds R channels' FMAs, whose weights are broadcast scalars. The work is the
// ROIs' own, minus the products with known zeros, times the lane padding of the batch (N rounded up to VW).
//
// Layouts: input (H, W, Cin, P) and output (Hp, Wp, C, P) with the P >= N samples innermost (P a
// multiple of VW); weights (C, kh * kw * Cin), row-major over (ky, kx, ci).

// The accumulator budget: R channels x NB sample vectors <= BL_ACC registers.
static const int BL_ACC = 24;

template <int NB, int R>
static void batch_tile(vf* res, const float* xt, int64_t P, const int32_t* tapq, int ntaps, int Cin,
                       const int32_t* zoff, const int32_t* zlist, const float* const* wr) {
    vf acc[R][NB];
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < NB; ++b) acc[r][b] = vf{};
    for (int t = 0; t < ntaps; ++t) {
        const int q = tapq[t];
        if (q < 0) continue;
        const int32_t lo = zoff[q], hi = zoff[q + 1];
        const float* xq = xt + (int64_t)q * Cin * P;
        const int koff = t * Cin;
        if (hi - lo == Cin) {  // every input channel may be non-zero here: no list
            for (int ci = 0; ci < Cin; ++ci) {
                const float* xp = xq + (int64_t)ci * P;
                vf xv[NB];
                for (int b = 0; b < NB; ++b) xv[b] = loadu(xp + b * VW);
                for (int r = 0; r < R; ++r) {
                    const float w = wr[r][koff + ci];
                    for (int b = 0; b < NB; ++b) acc[r][b] += w * xv[b];
                }
            }
        } else {
            for (int32_t j = lo; j < hi; ++j) {
                const int ci = zlist[j];
                const float* xp = xq + (int64_t)ci * P;
                vf xv[NB];
                for (int b = 0; b < NB; ++b) xv[b] = loadu(xp + b * VW);
                for (int r = 0; r < R; ++r) {
                    const float w = wr[r][koff + ci];
                    for (int b = 0; b < NB; ++b) acc[r][b] += w * xv[b];
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < NB; ++b) res[r * NB + b] = acc[r][b];
}

typedef void (*batch_tile_fn)(vf*, const float*, int64_t, const int32_t*, int, int, const int32_t*,
                              const int32_t*, const float* const*);

template <int NB, int R>
static void fill_table(batch_tile_fn* table) {
    table[R] = batch_tile<NB, R>;
    if constexpr (R > 1) fill_table<NB, R - 1>(table);
}

// table[NB][R]: the tile for NB sample vectors and R channels (R <= BL_ACC / NB)
struct BatchTiles {
    batch_tile_fn fn[5][BL_ACC + 1] = {};
    BatchTiles() {
        fill_table<1, BL_ACC / 1>(fn[1]);
        fill_table<2, BL_ACC / 2>(fn[2]);
        fill_table<3, BL_ACC / 3>(fn[3]);
        fill_table<4, BL_ACC / 4>(fn[4]);
    }
};
static const BatchTiles batch_tiles;

// ---- Reduction lanes: exact channel sets, vectorised over input channels -----------------------------------
//
// At batch 1 neither the batch nor the union of a group's ROIs fills a vector well when ROIs are small and
// scattered. Here the lanes run over VW input channels of the reduction, and a work item is one (channel set,
// sample): a set is a few output channels and one box of the conv map that holds each of their ROIs (the caller
// groups channels whose ROIs are the same box, or nearly; a position of the box outside a channel's ROI has
// window·mask 0 there and comes out as the channel's fill value). The micro-kernel keeps R channels x NP
// positions of the box in vector accumulators: per step it loads R weight vectors and NP input vectors for
// R * NP products. One channel alone, a ROI of one pixel, needs two loads per product; four channels sharing
// a box of four pixels, half a load. Each channel's weights are read once per sample and chunk of positions.
// Needs C_in a multiple of VW; the input is channels_last (N, H, W, Cin); weights (C, kh, kw, Cin).

// The accumulator budget of the tile: R * NP <= RD_ACC vectors, R <= RD_MAX_R, NP <= RD_MAX_NP.
static const int RD_ACC = 24;
static const int RD_MAX_R = 12;
static const int RD_MAX_NP = 12;

// acc[r * NP + p] += the products of one kernel row for R channels and NP positions whose whole window row lies
// inside the input; xp[p]: the input at column 0 of position p's window on that row; consecutive kx are pstep
// floats apart; wr[r]: channel r's weights of that row (kw * Cin floats).
template <int R, int NP>
static void reduce_tile(vf* acc, const float* const* xp, const float* const* wr, int kw, int Cin, int64_t pstep) {
    vf a[R][NP];
    for (int r = 0; r < R; ++r)
        for (int p = 0; p < NP; ++p) a[r][p] = acc[r * NP + p];
    for (int kx = 0; kx < kw; ++kx) {
        const int64_t wo = (int64_t)kx * Cin, xo = kx * pstep;
        for (int j = 0; j < Cin; j += VW) {
            vf w[R];
            for (int r = 0; r < R; ++r) w[r] = loadu(wr[r] + wo + j);
            for (int p = 0; p < NP; ++p) {
                const vf xv = loadu(xp[p] + xo + j);
                for (int r = 0; r < R; ++r) a[r][p] += w[r] * xv;
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int p = 0; p < NP; ++p) acc[r * NP + p] = a[r][p];
}

typedef void (*reduce_tile_fn)(vf*, const float* const*, const float* const*, int, int, int64_t);

template <int R, int NP>
static void fill_reduce(reduce_tile_fn (*table)[RD_MAX_NP + 1]) {
    table[R][NP] = reduce_tile<R, NP>;
    if constexpr (NP > 1) fill_reduce<R, NP - 1>(table);
}

// fn[R][NP] for R * NP <= RD_ACC (null elsewhere); rmax[NP]: the most channels a tile of NP positions takes
struct ReduceTiles {
    reduce_tile_fn fn[RD_MAX_R + 1][RD_MAX_NP + 1] = {};
    int rmax[RD_MAX_NP + 1] = {};
    ReduceTiles() {
        fill_reduce<1, 12>(fn); fill_reduce<2, 12>(fn); fill_reduce<3, 8>(fn); fill_reduce<4, 6>(fn);
        fill_reduce<5, 4>(fn); fill_reduce<6, 4>(fn); fill_reduce<7, 3>(fn); fill_reduce<8, 3>(fn);
        fill_reduce<9, 2>(fn); fill_reduce<10, 2>(fn); fill_reduce<11, 2>(fn); fill_reduce<12, 2>(fn);
        for (int np = 1; np <= RD_MAX_NP; ++np)
            for (int r = 1; r <= RD_MAX_R; ++r)
                if (fn[r][np]) rmax[np] = r;
    }
};
static const ReduceTiles reduce_tiles;

// The positions per chunk for a set of m channels over a box of `total` positions: the most products per load
// (R * NP / (R + NP)), R = min(m, rmax[NP]); ties go to more positions (fewer passes over the weights).
static int reduce_chunk(int m, int total) {
    int best = 1;
    double score = 0.0;
    for (int np = 1; np <= std::min(total, RD_MAX_NP); ++np) {
        const int r = std::min(m, reduce_tiles.rmax[np]);
        const double s = (double)r * np / (r + np);
        if (s >= score) score = s, best = np;
    }
    return best;
}

// One channel over NP consecutive positions of a box row (unit stride and dilation along x), one kernel row: the
// NP + KW - 1 input columns the row's windows span are each loaded once per input-channel block and feed up to KW
// products, against one load per product in reduce_tile<1, NP>. For the large ROIs that one or two channels
// hold alone. x: the input at the first position's window column 0 on that row; w: the channel's weights of the
// row (KW * Cin floats); consecutive columns are Cin floats apart.
template <int NP, int KW>
static void reduce_slide(vf* acc, const float* x, const float* w, int Cin) {
    vf a[NP];
    for (int p = 0; p < NP; ++p) a[p] = acc[p];
    for (int j = 0; j < Cin; j += VW) {
        vf wv[KW];
#pragma GCC unroll 8
        for (int kx = 0; kx < KW; ++kx) wv[kx] = loadu(w + (int64_t)kx * Cin + j);
#pragma GCC unroll 32
        for (int q = 0; q < NP + KW - 1; ++q) {
            const vf xv = loadu(x + (int64_t)q * Cin + j);
#pragma GCC unroll 8
            for (int kx = 0; kx < KW; ++kx) {
                const int p = q - kx;
                if (p >= 0 && p < NP) a[p] += wv[kx] * xv;
            }
        }
    }
    for (int p = 0; p < NP; ++p) acc[p] = a[p];
}

typedef void (*reduce_slide_fn)(vf*, const float*, const float*, int);

// The most positions of a sliding chunk (NP + KW - 1 input vectors, NP accumulators and KW weights in registers).
static const int RD_SLIDE_NP = 8;

template <int KW, int NP>
static void fill_slide(reduce_slide_fn* table) {
    table[NP] = reduce_slide<NP, KW>;
    if constexpr (NP > 1) fill_slide<KW, NP - 1>(table);
}

// fn3[NP], fn5[NP]: kernel widths 3 and 5, NP = 1..RD_SLIDE_NP
struct SlideTiles {
    reduce_slide_fn fn3[RD_SLIDE_NP + 1] = {}, fn5[RD_SLIDE_NP + 1] = {};
    SlideTiles() {
        fill_slide<3, RD_SLIDE_NP>(fn3);
        fill_slide<5, RD_SLIDE_NP>(fn5);
    }
};
static const SlideTiles slide_tiles;

static inline float hsum(vf v) {
    float t = 0.0f;
    for (int l = 0; l < VW; ++l) t += v[l];
    return t;
}

// One work item's box: a set of m channels (chans) over conv rows [y0, y1) and columns [x0, x1) of one sample's
// input xn. The two routines below write vals[i * total + (y - y0) * width + (x - x0)] for channel chans[i].
struct ReduceBox {
    const float* xn;
    const int32_t* chans;
    int m, y0, y1, x0, x1;
    int width() const { return x1 - x0; }
    int total() const { return (y1 - y0) * (x1 - x0); }
};

// The sliding tiles for one or two channels alone on a box at least RD_SLIDE_NP wide, with unit stride and
// dilation along x, a 3- or 5-wide kernel and every window of the box inside the input; null otherwise.
static const reduce_slide_fn* slide_for(const ReduceBox& bx, const Geometry& g) {
    if (g.sx != 1 || g.dx != 1 || bx.m > 2 || bx.width() < RD_SLIDE_NP) return nullptr;
    const reduce_slide_fn* slide = g.kw == 5 ? slide_tiles.fn5 : g.kw == 3 ? slide_tiles.fn3 : nullptr;
    const int iy_lo = bx.y0 * g.sy - g.pt, iy_hi = (bx.y1 - 1) * g.sy - g.pt + (g.kh - 1) * g.dy;
    const int ix_lo = bx.x0 - g.pl, ix_hi = bx.x1 - 1 - g.pl + g.kw - 1;
    return (iy_lo < 0 || iy_hi >= g.H || ix_lo < 0 || ix_hi >= g.W) ? nullptr : slide;
}

// Each channel row by row in sliding chunks of up to RD_SLIDE_NP positions (input columns shared across kx).
static void reduce_box_slide(const ReduceBox& bx, const Geometry& g, const float* weight,
                             const reduce_slide_fn* slide, float* vals) {
    const int64_t wstride = (int64_t)g.kh * g.kw * g.Cin, wrow = (int64_t)g.kw * g.Cin;
    const int total = bx.total(), rw = bx.width();
    for (int i = 0; i < bx.m; ++i) {
        const float* wc = weight + (int64_t)bx.chans[i] * wstride;
        for (int y = bx.y0; y < bx.y1; ++y)
            for (int xa = bx.x0; xa < bx.x1; xa += RD_SLIDE_NP) {
                const int np = std::min(RD_SLIDE_NP, bx.x1 - xa);
                vf a[RD_SLIDE_NP];
                for (int p = 0; p < np; ++p) a[p] = vf{};
                for (int ky = 0; ky < g.kh; ++ky) {
                    const int iy = y * g.sy - g.pt + ky * g.dy;
                    slide[np](a, bx.xn + ((int64_t)iy * g.W + (xa - g.pl)) * g.Cin, wc + ky * wrow, g.Cin);
                }
                for (int p = 0; p < np; ++p)
                    vals[(size_t)i * total + (size_t)(y - bx.y0) * rw + (xa - bx.x0) + p] = hsum(a[p]);
            }
    }
}

// The box's positions in chunks, row-major across its rows; per chunk the channels in tiles of R: the chunk's
// input rows stay in cache while the tiles run over them.
static void reduce_box_tiles(const ReduceBox& bx, const Geometry& g, const float* weight, float* vals) {
    const int64_t pstep = (int64_t)g.dx * g.Cin;
    const int64_t wstride = (int64_t)g.kh * g.kw * g.Cin, wrow = (int64_t)g.kw * g.Cin;
    const int total = bx.total(), rw = bx.width(), m = bx.m;
    const int chunk = reduce_chunk(m, total);
    for (int first = 0; first < total; first += chunk) {
        const int np = std::min(chunk, total - first);
        int py[RD_MAX_NP], pxc[RD_MAX_NP];
        for (int p = 0; p < np; ++p) {
            py[p] = bx.y0 + (first + p) / rw;
            pxc[p] = bx.x0 + (first + p) % rw;
        }
        for (int i0 = 0; i0 < m;) {
            const int r = std::min(m - i0, reduce_tiles.rmax[np]);
            vf a[RD_ACC];
            for (int k = 0; k < r * np; ++k) a[k] = vf{};
            const float* wr[RD_MAX_R];
            for (int k = 0; k < r; ++k) wr[k] = weight + (int64_t)bx.chans[i0 + k] * wstride;
            for (int ky = 0; ky < g.kh; ++ky) {
                // positions whose whole window row lies inside the input run together; the others one position,
                // channel and kx at a time, the taps outside skipped
                const float* px[RD_MAX_NP];
                const float* wk[RD_MAX_R];
                for (int k = 0; k < r; ++k) wk[k] = wr[k] + ky * wrow;
                bool inside = true;
                for (int p = 0; p < np; ++p) {
                    const int iy = py[p] * g.sy - g.pt + ky * g.dy;
                    const int ix = pxc[p] * g.sx - g.pl;
                    inside = inside && iy >= 0 && iy < g.H && ix >= 0 && ix + (g.kw - 1) * g.dx < g.W;
                    px[p] = bx.xn + ((int64_t)iy * g.W + ix) * g.Cin;
                }
                if (inside) {
                    reduce_tiles.fn[r][np](a, px, wk, g.kw, g.Cin, pstep);
                    continue;
                }
                for (int p = 0; p < np; ++p) {
                    const int iy = py[p] * g.sy - g.pt + ky * g.dy;
                    if (iy < 0 || iy >= g.H) continue;
                    const int ix0 = pxc[p] * g.sx - g.pl;
                    for (int kx = 0; kx < g.kw; ++kx) {
                        const int ix = ix0 + kx * g.dx;
                        if (ix < 0 || ix >= g.W) continue;
                        const float* one = bx.xn + ((int64_t)iy * g.W + ix) * g.Cin;
                        for (int k = 0; k < r; ++k) {
                            const float* wt = wk[k] + (int64_t)kx * g.Cin;
                            reduce_tiles.fn[1][1](a + k * np + p, &one, &wt, 1, g.Cin, 0);
                        }
                    }
                }
            }
            for (int k = 0; k < r; ++k)
                for (int p = 0; p < np; ++p) vals[(size_t)(i0 + k) * total + first + p] = hsum(a[k * np + p]);
            i0 += r;
        }
    }
}

extern "C" {

int tkn_vector_width() { return VW; }

// The argument lists of the entry points; tkn/engine/native.py refuses a library with another version.
int tkn_abi_version() { return 5; }

// x: (N, H, W, Cin) float32 contiguous. weight: (G, kh, Cin, kw, VW). ranges: (G, Hp * pool, 2) int32:
// the conv columns [xa, xb) to compute on each conv row (xb <= xa: none), xb <= Wp * pool. Positions of a
// pool window that are not computed hold the fill value. window: (G, Ho, Wo, VW). bias, scale, shift: (G, VW)
// or null. index: (G, VW) output channel of each lane (-1: padding). fill: (C,) value of each output
// channel where not computed. support: (Cin, 4) int32 boxes y0, y1, x0, x1 or null. residual: (N, Hp, Wp, C)
// or null (pool 1 only; fill is then the value before the residual and the ReLU). out: (N, Hp, Wp, C).
// Returns 0, or a negative code (TKN_E_*) for an argument it cannot handle.
int tkn_roi_conv(const float* x, const float* weight, const int32_t* ranges, const float* window,
                 const float* bias, const float* scale, const float* shift, const int32_t* index,
                 const float* fill, const int32_t* support, const float* residual, float* out,
                 const int32_t* dims, int G, int relu, int nthreads) {
    Geometry g;
    if (const int code = read_geometry(dims, g)) return code;
    if (!x || !weight || !ranges || !window || !index || !fill || !out) return TKN_E_NULL;
    if (G < 0 || g.kh > TKN_MAX_KH) return TKN_E_SIZE;
    const int P = g.pool;
    if (residual && P != 1) return TKN_E_RESIDUAL;
    for (int64_t i = 0; i < (int64_t)G * VW; ++i)
        if (index[i] < -1 || index[i] >= g.C) return TKN_E_CHANNEL;
    for (int64_t i = 0; i < (int64_t)G * g.Hp * P; ++i) {
        const int32_t xa = ranges[2 * i], xb = ranges[2 * i + 1];
        if (xb > xa && (xa < 0 || xb > g.Wp * P)) return TKN_E_RANGE;
    }
    const bool relu_inner = relu && !residual;  // with a residual the ReLU comes after the addition
    if (nthreads < 1) nthreads = 1;

    bool zero = true;
    for (int c = 0; c < g.C; ++c) zero = zero && fill[c] == 0.0f;
    const int64_t positions = (int64_t)g.N * g.Hp * g.Wp;
    if (positions == 0) return 0;

    // per group: lane fill values (for rows of a pool window that are not computed) and whether the
    // lanes are consecutive output channels (one vector store)
    std::vector<float> lane_fill((size_t)G * VW, 0.0f);
    std::vector<int> contiguous(G, 0);
    for (int gi = 0; gi < G; ++gi) {
        const int32_t* idx = index + (size_t)gi * VW;
        bool cont = idx[0] >= 0 && idx[0] + VW <= g.C;
        for (int l = 0; l < VW; ++l) {
            if (idx[l] >= 0) lane_fill[(size_t)gi * VW + l] = fill[idx[l]];
            cont = cont && idx[l] == idx[0] + l;
        }
        contiguous[gi] = cont;
    }

    // work items: (group, pooled row) with a non-empty range on one of its conv rows
    const int rows_used = g.Hp * P;
    std::vector<int> items;
    for (int gi = 0; gi < G; ++gi)
        for (int r = 0; r < g.Hp; ++r) {
            bool any = false;
            for (int y = r * P; y < r * P + P; ++y) {
                const int32_t* rg = ranges + ((size_t)gi * rows_used + y) * 2;
                any = any || rg[1] > rg[0];
            }
            if (any) items.push_back(gi * g.Hp + r);
        }
    const int64_t n_items = (int64_t)items.size() * g.N;
    const bool sample_major = (int64_t)G * g.kh * g.kw * g.Cin * VW * sizeof(float) <= ((int64_t)1 << 19);
    const std::vector<float> zeros(g.Cin, 0.0f);
    vf minus_inf;
    for (int l = 0; l < VW; ++l) minus_inf[l] = -__builtin_inff();
    // input offsets of k = (ky, kx, ci) from a window's origin, for the flat loop (int32: checked here)
    const int K = g.kh * g.kw * g.Cin;
    std::vector<int32_t> koff(K);
    // (with 256 input channels the nested loops ran 5% faster: no offset load per step)
    const bool flat = !support && g.Cin < 32;  // FLAT_CHANNELS in native.py
    if ((int64_t)((g.kh - 1) * g.dy + 1) * g.W * g.Cin >= (int64_t)1 << 31) return TKN_E_TOO_LARGE;
    for (int ky = 0, k = 0; ky < g.kh; ++ky)
        for (int ci = 0; ci < g.Cin; ++ci)
            for (int kx = 0; kx < g.kw; ++kx, ++k) koff[k] = ((ky * g.dy) * g.W + kx * g.dx) * g.Cin + ci;

#pragma omp parallel num_threads(nthreads)
    {
        // every output position first holds its channels' fill values (one parallel region: one fork)
#pragma omp for schedule(static)
        for (int64_t i = 0; i < positions; ++i) {
            if (residual) {
                const float* res = residual + i * g.C;
                float* o = out + i * g.C;
                for (int c = 0; c < g.C; ++c) {
                    const float v = fill[c] + res[c];
                    o[c] = (relu && v < 0.0f) ? 0.0f : v;
                }
            } else if (zero) {
                std::memset(out + i * g.C, 0, sizeof(float) * g.C);
            } else {
                std::memcpy(out + i * g.C, fill, sizeof(float) * g.C);
            }
        }
        std::vector<int> list_store((size_t)g.kh * g.Cin);
        std::vector<vf> mx;  // the pooled row's conv values, max-reduced over its conv rows
        const float* rows[64];
        int ok_rows[64];
        const int* lists[64];
        int counts[64];
        for (int ky = 0; ky < g.kh; ++ky) lists[ky] = list_store.data() + (size_t)ky * g.Cin;

#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
            // sample-major when all the weights fit in a core's cache (each sample's output region stays
            // cached while every group writes it), group-major otherwise (a group's weights stay cached)
            const int64_t per_sample = (int64_t)items.size();
            const int item = sample_major ? items[it % per_sample] : items[it / g.N];
            const int n = (int)(sample_major ? it / per_sample : it % g.N);
            const int gi = item / g.Hp, r = item % g.Hp;
            const int32_t* rg = ranges + (size_t)gi * rows_used * 2;
            const float* wg = weight + (size_t)gi * g.kh * g.kw * g.Cin * VW;
            const float* xn = x + (int64_t)n * g.H * g.W * g.Cin;
            const int32_t* idx = index + (size_t)gi * VW;
            const vf fillv = loadu(lane_fill.data() + (size_t)gi * VW);
            vf bv = {}, scv = vf{} + 1.0f, shv = {};
            if (bias) bv = loadu(bias + (size_t)gi * VW);
            if (scale) scv = loadu(scale + (size_t)gi * VW);
            if (shift) shv = loadu(shift + (size_t)gi * VW);
            const bool affine = scale || shift;
            // the pooled columns [A / P, B / P) this item writes
            int A = g.Wp * P, B = 0;
            for (int y = r * P; y < r * P + P; ++y)
                if (rg[2 * y + 1] > rg[2 * y]) {
                    A = std::min(A, rg[2 * y] / P * P);
                    B = std::max(B, (rg[2 * y + 1] + P - 1) / P * P);
                }
            mx.assign(B - A, minus_inf);

            for (int y = r * P; y < r * P + P; ++y) {
                const int xa = rg[2 * y], xb = rg[2 * y + 1];
                if (xb <= xa) continue;
                for (int ky = 0; ky < g.kh; ++ky) {
                    const int iy = y * g.sy - g.pt + ky * g.dy;
                    ok_rows[ky] = iy >= 0 && iy < g.H;
                    rows[ky] = ok_rows[ky] ? xn + (int64_t)iy * g.W * g.Cin : nullptr;
                }
                const int iy_first = y * g.sy - g.pt;
                const bool inside_y = iy_first >= 0 && iy_first + (g.kh - 1) * g.dy < g.H;
                // chunks of equal size, at most NP_MAX
                const int pieces = (xb - xa + NP_MAX - 1) / NP_MAX;
                const int step = (xb - xa + pieces - 1) / pieces;
                for (int x0 = xa; x0 < xb; x0 += step) {
                    const int np = std::min(step, xb - x0);
                    const int ix_first = x0 * g.sx - g.pl;
                    const bool inside_x = ix_first >= 0 && (x0 + np - 1) * g.sx - g.pl + (g.kw - 1) * g.dx < g.W;
                    vf acc[NP_MAX];
                    for (int p = 0; p < np; ++p) acc[p] = vf{};
                    if (flat && inside_x && inside_y) {
                        accumulate_flat_n(np, acc, xn + ((int64_t)iy_first * g.W + ix_first) * g.Cin,
                                          (int64_t)g.sx * g.Cin, koff.data(), wg, K);
                    } else if (support) {
                        const int cx0 = x0 * g.sx - g.pl;
                        const int cx1 = (x0 + np - 1) * g.sx - g.pl + (g.kw - 1) * g.dx + 1;
                        for (int ky = 0; ky < g.kh; ++ky) {
                            int cnt = 0;
                            if (ok_rows[ky]) {
                                const int iy = y * g.sy - g.pt + ky * g.dy;
                                int* lst = list_store.data() + (size_t)ky * g.Cin;
                                for (int ci = 0; ci < g.Cin; ++ci) {
                                    const int32_t* s = support + (size_t)ci * 4;
                                    if (s[0] <= iy && iy < s[1] && s[2] < cx1 && s[3] > cx0) lst[cnt++] = ci;
                                }
                            }
                            counts[ky] = cnt;
                        }
                        if (!try_slide<true>(np, acc, rows, ok_rows, wg, g, ix_first, inside_x, lists, counts))
                            accumulate_n<true>(np, acc, rows, ok_rows, g.kh, wg, g, x0, zeros.data(), lists, counts);
                    } else {
                        accumulate_n<false>(np, acc, rows, ok_rows, g.kh, wg, g, x0, zeros.data(), lists, counts);
                    }
                    const float* wrow = window + (((size_t)gi * g.Ho + y) * g.Wo + x0) * VW;
                    vf* m = mx.data() + (x0 - A);
                    for (int p = 0; p < np; ++p) {
                        vf v = acc[p];
                        if (bias) v += bv;
                        v *= loadu(wrow + (size_t)p * VW);
                        if (affine) v = v * scv + shv;
                        if (relu_inner) v = vmax(v, vf{});
                        m[p] = vmax(m[p], v);
                    }
                }
            }
            for (int q = A / P; q < B / P; ++q) {
                vf o = mx[q * P - A];
                for (int k = 1; k < P; ++k) o = vmax(o, mx[q * P + k - A]);
                int computed = 0;  // positions of the pool window computed; the others hold the fill value
                for (int y = r * P; y < r * P + P; ++y)
                    computed += std::max(0, std::min(rg[2 * y + 1], q * P + P) - std::max(rg[2 * y], q * P));
                if (computed < P * P) o = vmax(o, fillv);
                const int64_t at = (((int64_t)n * g.Hp + r) * g.Wp + q) * g.C;
                float* dst = out + at;
                if (residual) {  // P == 1: every position in [A, B) is computed
                    const float* res = residual + at;
                    if (contiguous[gi]) {
                        o += loadu(res + idx[0]);
                    } else {
                        for (int l = 0; l < VW; ++l)
                            if (idx[l] >= 0) o[l] += res[idx[l]];
                    }
                    if (relu) o = vmax(o, vf{});
                }
                if (contiguous[gi]) {
                    storeu(dst + idx[0], o);
                } else {
                    for (int l = 0; l < VW; ++l)
                        if (idx[l] >= 0) dst[idx[l]] = o[l];
                }
            }
        }
    }
    return 0;
}

// The batch-lane strategy (see above). xt: (H, W, Cin, P). wc: (C, kh * kw * Cin). zoff: (H * W + 1) and
// zlist: per input pixel, the input channels that may be non-zero there (CSR). soff: (Ho * Wo + 1) and slist:
// per conv position, the output channels whose ROI holds it (CSR; only rows < Hp * pool and columns
// < Wp * pool are read). window: (C, Ho, Wo) window·mask. bias, scale, shift: (C,) or null. fill: (C,) the
// value where a channel is not computed. out: (Hp, Wp, C, P). dims: as for tkn_roi_conv, with dims[0] = P.
// zlen, slen: the lengths of zlist and slist (zoff and soff end there).
// Returns 0, or a negative code (TKN_E_*) for an argument it cannot handle.
static int check_csr(const int32_t* off, int64_t rows, const int32_t* list, int64_t len, int limit) {
    if (len < 0 || off[0] != 0 || off[rows] != len) return TKN_E_CSR;
    for (int64_t r = 0; r < rows; ++r)
        if (off[r + 1] < off[r]) return TKN_E_CSR;
    for (int64_t j = 0; j < len; ++j)
        if (list[j] < 0 || list[j] >= limit) return TKN_E_CHANNEL;
    return 0;
}

int tkn_roi_conv_batch(const float* xt, const float* wc, const int32_t* zoff, const int32_t* zlist,
                       const int32_t* soff, const int32_t* slist, const float* window, const float* bias,
                       const float* scale, const float* shift, const float* fill, float* out,
                       const int32_t* dims, int zlen, int slen, int relu, int nthreads) {
    Geometry g;
    if (const int code = read_geometry(dims, g)) return code;
    if (!xt || !wc || !zoff || !soff || !window || !fill || !out || (zlen > 0 && !zlist) || (slen > 0 && !slist))
        return TKN_E_NULL;
    const int64_t P = g.N;
    const int pool = g.pool;
    if (P % VW != 0 || P < VW) return TKN_E_LANES;
    const int ntaps = g.kh * g.kw;
    if (ntaps > 4096) return TKN_E_TAPS;
    if (const int code = check_csr(zoff, (int64_t)g.H * g.W, zlist, zlen, g.Cin)) return code;
    if (const int code = check_csr(soff, (int64_t)g.Ho * g.Wo, slist, slen, g.C)) return code;
    if (nthreads < 1) nthreads = 1;
    const int NV = (int)(P / VW);
    // sample vectors in chunks of at most 4, as even as possible
    const int chunks = (NV + 3) / 4;
    const int64_t outputs = (int64_t)g.Hp * g.Wp;
    const int64_t n_items = outputs * chunks;
    if (outputs == 0) return 0;

#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < outputs * g.C; ++i) {
            const float f = fill[i % g.C];
            float* o = out + i * P;
            for (int64_t n = 0; n < P; ++n) o[n] = f;
        }
        std::vector<vf> mx((size_t)g.C * 4);
        std::vector<int> hits(g.C, 0);
        std::vector<int> touched;
        touched.reserve(g.C);
        std::vector<int32_t> tapq(ntaps);
        vf res[BL_ACC];
        const float* wr[BL_ACC];
        vf minus_inf;
        for (int l = 0; l < VW; ++l) minus_inf[l] = -__builtin_inff();
        for (size_t k = 0; k < mx.size(); ++k) mx[k] = minus_inf;

#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
            const int64_t o = it / chunks;
            const int chunk = (int)(it % chunks);
            const int v0 = (int)((int64_t)NV * chunk / chunks), v1 = (int)((int64_t)NV * (chunk + 1) / chunks);
            const int NB = v1 - v0;
            const int qy = (int)(o / g.Wp), qx = (int)(o % g.Wp);
            const float* xb = xt + (int64_t)v0 * VW;
            const int rmax = BL_ACC / NB;
            for (int y = qy * pool; y < qy * pool + pool; ++y)
                for (int x = qx * pool; x < qx * pool + pool; ++x) {
                    const int p = y * g.Wo + x;
                    const int32_t s0 = soff[p], s1 = soff[p + 1];
                    if (s1 <= s0) continue;
                    for (int ky = 0, t = 0; ky < g.kh; ++ky) {
                        const int iy = y * g.sy - g.pt + ky * g.dy;
                        for (int kx = 0; kx < g.kw; ++kx, ++t) {
                            const int ix = x * g.sx - g.pl + kx * g.dx;
                            tapq[t] = (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) ? iy * g.W + ix : -1;
                        }
                    }
                    for (int32_t s = s0; s < s1; s += rmax) {
                        const int R = std::min<int32_t>(rmax, s1 - s);
                        for (int r = 0; r < R; ++r) wr[r] = wc + (int64_t)slist[s + r] * ntaps * g.Cin;
                        batch_tiles.fn[NB][R](res, xb, P, tapq.data(), ntaps, g.Cin, zoff, zlist, wr);
                        for (int r = 0; r < R; ++r) {
                            const int c = slist[s + r];
                            const float wv = window[((int64_t)c * g.Ho + y) * g.Wo + x];
                            const float bv = bias ? bias[c] : 0.0f;
                            const float sc = scale ? scale[c] : 1.0f, sh = shift ? shift[c] : 0.0f;
                            if (hits[c] == 0) touched.push_back(c);
                            ++hits[c];
                            for (int b = 0; b < NB; ++b) {
                                vf v = (res[r * NB + b] + bv) * wv;
                                if (scale || shift) v = v * sc + sh;
                                if (relu) v = vmax(v, vf{});
                                mx[(size_t)c * 4 + b] = vmax(mx[(size_t)c * 4 + b], v);
                            }
                        }
                    }
                }
            float* ob = out + o * g.C * P + (int64_t)v0 * VW;
            for (const int c : touched) {
                const bool partial = hits[c] < pool * pool;  // the window's other positions hold the fill
                const vf f = vf{} + fill[c];
                for (int b = 0; b < NB; ++b) {
                    vf v = mx[(size_t)c * 4 + b];
                    if (partial) v = vmax(v, f);
                    storeu(ob + (int64_t)c * P + b * VW, v);
                    mx[(size_t)c * 4 + b] = minus_inf;
                }
                hits[c] = 0;
            }
            touched.clear();
        }
    }
    return 0;
}

// The reduction-lane strategy (see above). x: (N, H, W, Cin) channels_last, Cin a multiple of VW.
// weight: (C, kh, kw, Cin). set_offsets: (S + 1,) CSR offsets into set_channels (set_len entries), each output
// channel in at most one set; set_boxes: (S, 4) int32 boxes y0, y1, x0, x1 of the conv output, one per set.
// Channels in no set are their fill value everywhere. window: (C, Ho, Wo). bias, scale, shift: (C,) or null.
// fill: (C,). out: (N, Hp, Wp, C). dims: as for tkn_roi_conv. Work items are (set, sample) in the given set order
// (dynamically scheduled: the caller puts the largest sets first). Returns 0, or a negative code (TKN_E_*).
int tkn_roi_conv_reduce(const float* x, const float* weight, const int32_t* set_offsets, const int32_t* set_channels,
                        const int32_t* set_boxes, const float* window, const float* bias, const float* scale,
                        const float* shift, const float* fill, float* out, const int32_t* dims, int S, int set_len,
                        int relu, int nthreads) {
    Geometry g;
    if (const int code = read_geometry(dims, g)) return code;
    if (!x || !weight || !set_offsets || !window || !fill || !out || (set_len > 0 && (!set_channels || !set_boxes)))
        return TKN_E_NULL;
    if (S < 0 || set_len < 0) return TKN_E_SIZE;
    const int pool = g.pool;
    if (g.Cin % VW != 0) return TKN_E_REDUCE_CIN;
    if (set_offsets[0] != 0 || set_offsets[S] != set_len) return TKN_E_CSR;
    for (int s = 0; s < S; ++s)
        if (set_offsets[s + 1] < set_offsets[s]) return TKN_E_CSR;
    std::vector<char> seen(g.C, 0);
    for (int j = 0; j < set_len; ++j) {
        const int c = set_channels[j];
        if (c < 0 || c >= g.C || seen[c]) return TKN_E_CHANNEL;
        seen[c] = 1;
    }
    for (int s = 0; s < S; ++s) {
        const int32_t* b = set_boxes + (size_t)s * 4;
        if (b[0] < 0 || b[0] > g.Ho || b[1] < 0 || b[1] > g.Ho || b[2] < 0 || b[2] > g.Wo || b[3] < 0 || b[3] > g.Wo)
            return TKN_E_RANGE;
    }
    if (nthreads < 1) nthreads = 1;
    const int64_t positions = (int64_t)g.N * g.Hp * g.Wp;
    if (positions == 0) return 0;
    const int rows_used = g.Hp * pool, cols_used = g.Wp * pool;
    const int64_t n_items = (int64_t)S * g.N;

#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < positions; ++i) std::memcpy(out + i * g.C, fill, sizeof(float) * g.C);
        std::vector<float> vals;

#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < n_items; ++it) {
            const int s = (int)(it / g.N);
            const int n = (int)(it % g.N);
            const int32_t* b = set_boxes + (size_t)s * 4;
            const int y0 = b[0], y1 = std::min(b[1], rows_used), x0 = b[2], x1 = std::min(b[3], cols_used);
            const int rh = y1 - y0, rw = x1 - x0;
            const int32_t* chans = set_channels + set_offsets[s];
            const int m = set_offsets[s + 1] - set_offsets[s];
            if (rh <= 0 || rw <= 0 || m == 0) continue;
            const int total = rh * rw;
            vals.resize((size_t)m * total);  // vals[i * total + q]: channel chans[i] at the box's position q
            const float* xn = x + (int64_t)n * g.H * g.W * g.Cin;
            const ReduceBox bx{xn, chans, m, y0, y1, x0, x1};
            if (const reduce_slide_fn* slide = slide_for(bx, g))
                reduce_box_slide(bx, g, weight, slide, vals.data());
            else
                reduce_box_tiles(bx, g, weight, vals.data());
            // per channel: the epilogue on the box's values, then the pool over the pooled positions the box meets
            for (int i = 0; i < m; ++i) {
                const int c = chans[i];
                float* v = vals.data() + (size_t)i * total;
                const float bv = bias ? bias[c] : 0.0f;
                const float sc = scale ? scale[c] : 1.0f, sh = shift ? shift[c] : 0.0f;
                for (int y = y0; y < y1; ++y)
                    for (int xx = x0; xx < x1; ++xx) {
                        float& e = v[(size_t)(y - y0) * rw + (xx - x0)];
                        e = (e + bv) * window[((int64_t)c * g.Ho + y) * g.Wo + xx];
                        if (scale || shift) e = e * sc + sh;
                        if (relu && e < 0.0f) e = 0.0f;
                    }
                for (int qy = y0 / pool; qy < (y1 + pool - 1) / pool; ++qy)
                    for (int qx = x0 / pool; qx < (x1 + pool - 1) / pool; ++qx) {
                        float mx = -__builtin_inff();
                        int computed = 0;
                        for (int y = qy * pool; y < qy * pool + pool; ++y)
                            for (int xx = qx * pool; xx < qx * pool + pool; ++xx)
                                if (y >= y0 && y < y1 && xx >= x0 && xx < x1) {
                                    mx = std::max(mx, v[(size_t)(y - y0) * rw + (xx - x0)]);
                                    ++computed;
                                }
                        if (computed < pool * pool) mx = std::max(mx, fill[c]);
                        out[(((int64_t)n * g.Hp + qy) * g.Wp + qx) * g.C + c] = mx;
                    }
            }
        }
    }
    return 0;
}

}  // extern "C"
