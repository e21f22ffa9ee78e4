// fastrnn cluster tier: what the device kernel and the host simulator share.
//
// Everything here is plain C++ that compiles both with nvcc (device code, FR_FN = __device__
// __forceinline__) and with g++ (the host simulator, FR_FN = inline): the storage conversions,
// the cell maths, the launch configuration (Cfg) with its shared-memory layout, and every index
// function that decides which element of which tensor a CTA, warp, lane or thread touches.  The
// hardware operations (ldmatrix, mma.sync, st.async, mbarriers, barriers) are not here: the kernel
// body (cluster_kernel.cuh) calls them through an HW object, which is cluster_device.cuh's inline
// PTX on the GPU and the simulator's model of the PTX ISA on the host.
//
// No header is included in device builds: the source compiles to the same cubin wherever nvcc
// runs, without torch or the CUDA runtime headers.
#pragma once

#if defined(__CUDACC__)
#define FR_FN __device__ __forceinline__
#define FR_DEVICE 1
#else
#define FR_FN inline
#define FR_DEVICE 0
#include <cmath>
#include <cstring>
#endif

namespace fr {

typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

struct V4 {
  u32 x, y, z, w;
};

// ---------------------------------------------------------------------------------------------
// Storage dtypes: fp16 (DT_F16) and bf16 (DT_BF16), held as raw 16-bit patterns.

enum { DT_F16 = 0, DT_BF16 = 1 };

#if FR_DEVICE
template <int DT>
FR_FN float to_f32(u16 v) {
  if (DT == DT_F16) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
  } else {
    return __uint_as_float(((u32)v) << 16);
  }
}
template <int DT>
FR_FN u16 to_storage(float f) {
  u16 r;
  if (DT == DT_F16) {
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
  } else {
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
  }
  return r;
}
FR_FN float fr_exp(float x) {  // ex2.approx of x log2(e), as Triton lowers tl.exp
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}
FR_FN float fr_rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
FR_FN float fr_nan() { return __uint_as_float(0x7fffffffu); }
FR_FN float bits_as_float(u32 x) { return __uint_as_float(x); }
FR_FN u32 float_as_bits(float f) { return __float_as_uint(f); }
#else
inline float bits_f32(u32 x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline u32 f32_bits(float f) {
  u32 x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float f16_to_f32(u16 h) {
  const u32 sign = (u32)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = (float)m * 5.9604644775390625e-08f;  // m * 2^-24: subnormal or zero
    return (h & 0x8000u) ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}
inline u16 f32_to_f16(float f) {  // round to nearest even, overflow to inf, NaN kept
  const u32 x = f32_bits(f), sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu;
  u32 mant = x & 0x7fffffu;
  if (exp == 0xff) return (u16)(sign | 0x7c00u | (mant ? 0x200u : 0u));
  const int e = (int)exp - 112;
  if (e >= 31) return (u16)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (u16)sign;
    mant |= 0x800000u;
    const int shift = 14 - e;
    u32 hm = mant >> shift;
    const u32 rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (hm & 1u))) ++hm;
    return (u16)(sign | hm);
  }
  u32 h = sign | ((u32)e << 10) | (mant >> 13);
  const u32 rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (u16)h;
}
inline u16 f32_to_bf16(float f) {
  const u32 x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x40u);
  return (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
template <int DT>
inline float to_f32(u16 v) {
  return DT == DT_F16 ? f16_to_f32(v) : bits_f32(((u32)v) << 16);
}
template <int DT>
inline u16 to_storage(float f) {
  return DT == DT_F16 ? f32_to_f16(f) : f32_to_bf16(f);
}
inline float fr_exp(float x) { return std::exp(x); }
inline float fr_rcp(float x) { return 1.0f / x; }
inline float fr_nan() { return bits_f32(0x7fffffffu); }
inline float bits_as_float(u32 x) { return bits_f32(x); }
inline u32 float_as_bits(float f) { return f32_bits(f); }
#endif

// tanh as fastrnn/kernels/common.py states it for fp32: an odd polynomial below |x| = 0.625,
// 1 - 2/(exp(2|x|) + 1) above (|x| capped at 20), NaN passed through.
FR_FN float fr_tanh(float x) {
  const float a = x < 0.0f ? -x : x;
  const bool small = a < 0.625f;
  const float ac = a > 20.0f ? 20.0f : a;
  const float big = 1.0f - 2.0f * fr_rcp(fr_exp(2.0f * ac) + 1.0f);
  const float s = small ? a : 0.0f;
  const float z = s * s;
  const float q = -0.3333328068256378f +
                  z * (0.13331441581249237f +
                       z * (-0.05373971536755562f + z * (0.02063908614218235f + z * -0.005704985000193119f)));
  const float t = small ? s + s * z * q : big;
  return x < 0.0f ? -t : t;
}
FR_FN float fr_sigmoid(float x) { return fr_rcp(1.0f + fr_exp(-x)); }

// ---------------------------------------------------------------------------------------------
// Cells: gate order, saved tensors and maths as fastrnn/kernels/cells.py states them.

enum { CELL_RNN_TANH = 0, CELL_RNN_RELU = 1, CELL_LSTM = 2, CELL_GRU = 3 };

template <int CELL>
struct Cell;

// The plain RNN cells: m = act(x W_ih^T + h W_hh^T), act tanh or relu; no cell state, nothing saved
// but h_new.
template <int CELL>
struct RnnCell {
  static constexpr int G = 1, S = 0, INNER = -1;
  static constexpr bool HAS_C = false, READ_H_NEW = true, READ_H_PREV = false;
  FR_FN static void forward(const float* px, const float* ph, float h, float c, float& m, float& c_new, float* sv) {
    const float v = px[0] + ph[0];
    if constexpr (CELL == CELL_RNN_TANH) {
      m = fr_tanh(v);
    } else {
      m = v > 0.0f ? v : 0.0f;
    }
    c_new = c;
  }
  FR_FN static void backward(float dm, float dc, const float* sv, float h_new, float h_prev, float c_prev,
                             float* d_px, float* d_ph, float& dh_direct, float& dc_prev) {
    float d;
    if constexpr (CELL == CELL_RNN_TANH) {
      d = dm * (1.0f - h_new * h_new);
    } else {
      d = h_new > 0.0f ? dm : 0.0f;
    }
    d_px[0] = d;
    d_ph[0] = d;
    dh_direct = 0.0f;
    dc_prev = dc;
  }
};

template <>
struct Cell<CELL_RNN_TANH> : RnnCell<CELL_RNN_TANH> {};

template <>
struct Cell<CELL_RNN_RELU> : RnnCell<CELL_RNN_RELU> {};

template <>
struct Cell<CELL_LSTM> {
  static constexpr int G = 4, S = 5, INNER = -1, STATE_SLOT = 4;
  static constexpr bool HAS_C = true, READ_H_NEW = false, READ_H_PREV = false;
  FR_FN static void forward(const float* px, const float* ph, float h, float c, float& m, float& c_new, float* sv) {
    const float i = fr_sigmoid(px[0] + ph[0]);
    const float f = fr_sigmoid(px[1] + ph[1]);
    const float g = fr_tanh(px[2] + ph[2]);
    const float o = fr_sigmoid(px[3] + ph[3]);
    c_new = f * c + i * g;
    m = o * fr_tanh(c_new);
    sv[0] = i;
    sv[1] = f;
    sv[2] = g;
    sv[3] = o;
    sv[4] = c_new;
  }
  FR_FN static void backward(float dm, float dc, const float* sv, float h_new, float h_prev, float c_prev,
                             float* d_px, float* d_ph, float& dh_direct, float& dc_prev) {
    const float i = sv[0], f = sv[1], g = sv[2], o = sv[3], c = sv[4];
    const float tc = fr_tanh(c);
    const float dct = dc + dm * o * (1.0f - tc * tc);
    d_px[0] = dct * g * i * (1.0f - i);
    d_px[1] = dct * c_prev * f * (1.0f - f);
    d_px[2] = dct * i * (1.0f - g * g);
    d_px[3] = dm * tc * o * (1.0f - o);
    for (int k = 0; k < 4; ++k) d_ph[k] = d_px[k];
    dh_direct = 0.0f;
    dc_prev = dct * f;
  }
};

template <>
struct Cell<CELL_GRU> {
  static constexpr int G = 3, S = 4, INNER = 2;  // n keeps b_hn inside: r * (W_hn h + b_hn)
  static constexpr bool HAS_C = false, READ_H_NEW = false, READ_H_PREV = true;
  FR_FN static void forward(const float* px, const float* ph, float h, float c, float& m, float& c_new, float* sv) {
    const float r = fr_sigmoid(px[0] + ph[0]);
    const float z = fr_sigmoid(px[1] + ph[1]);
    const float n = fr_tanh(px[2] + r * ph[2]);
    m = (1.0f - z) * n + z * h;
    c_new = c;
    sv[0] = r;
    sv[1] = z;
    sv[2] = n;
    sv[3] = ph[2];
  }
  FR_FN static void backward(float dm, float dc, const float* sv, float h_new, float h_prev, float c_prev,
                             float* d_px, float* d_ph, float& dh_direct, float& dc_prev) {
    const float r = sv[0], z = sv[1], n = sv[2], hn = sv[3];
    const float dn = dm * (1.0f - z) * (1.0f - n * n);
    const float dz = dm * (h_prev - n) * z * (1.0f - z);
    const float dr = dn * hn * r * (1.0f - r);
    d_px[0] = dr;
    d_px[1] = dz;
    d_px[2] = dn;
    d_ph[0] = dr;
    d_ph[1] = dz;
    d_ph[2] = dn * r;
    dh_direct = dm * z;
    dc_prev = dc;
  }
};

// ---------------------------------------------------------------------------------------------
// The launch configuration: every size is a compile-time constant (register arrays, unrolled
// loops).  One cluster of C CTAs runs BT sequences; CTA `rank` owns hidden units
// [rank*U, (rank+1)*U).  Each step is one product "out (M x BT) = A (M x K) @ v^T (K x BT)":
//
//   forward  (DIR 0): rows m = g*U + u (gate g of the CTA's unit u), K = H, v = h_{t-1} gathered
//                     from every CTA; A[m][k] = W_hh[g*H + rank*U + u][k]
//   backward (DIR 1, all-gather): rows m = u, K = G*H, v = dpre_t (the gates' recurrent-part
//                     gradients) gathered from every CTA; A[m][k] = W_hh[k][rank*U + m]
//   backward (DIR 2, reduce-scatter): rows m = j (every unit), K = G*U, v = the CTA's own dpre_t;
//                     A[m][k] = W_hh[(k / U)*H + rank*U + k % U][m]: fp32 partial sums of dh for
//                     every unit, each CTA's U rows sent to it and summed there (half the bytes of
//                     the all-gather for an LSTM, and a quarter of its receive buffers)
//
// NW warps = WM (split over the rows' 16-row m-tiles) x WK (split over K's 16-wide k-steps); a warp
// keeps its first KREG k-steps of A in registers and the rest (KSM) in shared memory, both in the
// mma.sync fragment order.  AS independent accumulator sets shorten the dependent mma chain.

enum { DIR_FWD = 0, DIR_BWD = 1, DIR_BWD_RS = 2 };

constexpr int align_up(int x, int a) { return (x + a - 1) / a * a; }

template <int CELL_, int DT_, int DIR_, int H_, int C_, int BT_, int NW_, int WM_, int KREG_, int AS_>
struct Cfg {
  static constexpr int CELL = CELL_, DT = DT_, DIR = DIR_, H = H_, C = C_, BT = BT_, NW = NW_, WM = WM_;
  static constexpr int KREG = KREG_, AS = AS_;
  typedef fr::Cell<CELL_> CellT;
  static constexpr int G = CellT::G, S = CellT::S;
  static constexpr bool RS = DIR == DIR_BWD_RS;
  static constexpr int U = H / C;                                  // hidden units per CTA
  static constexpr int M = DIR == DIR_FWD ? G * U : RS ? H : U;    // rows of the CTA's product
  static constexpr int K = DIR == DIR_FWD ? H : RS ? G * U : G * H;  // length of its vector v
  static constexpr int GP = DIR == DIR_FWD ? 1 : G;                // blocks of U values a pair stages
  static constexpr int MT = M / 16, KS = K / 16, NT = BT / 8;
  static constexpr int WK = NW / WM, MTW = MT / WM, KSW = KS / WK, KSM = KSW - KREG;
  static constexpr int NTHREADS = NW * 32;
  static constexpr int PAIRS = U * BT;                             // (unit, sequence) pairs of a CTA
  static constexpr int PP = (PAIRS + NTHREADS - 1) / NTHREADS;     // pairs per thread
  static constexpr int LDV = K + 8;   // row stride (16-bit elements) of v: no ldmatrix bank conflicts
  static constexpr int LDM = M + 4;   // row stride (floats) of the partial-sum buffer: no store bank conflicts
  // 16-byte pieces a CTA sends to each CTA per exchange: 8 16-bit values of its slice (all-gather),
  // 4 fp32 partial sums of the receiver's units (reduce-scatter)
  static constexpr int CHUNKS = RS ? BT * U / 4 : BT * GP * U / 8;
  static constexpr int BYTES = RS ? C * BT * U * 4 : BT * K * 2;   // bytes every CTA receives per exchange
  // shared memory layout (bytes)
  static constexpr int OFF_BAR = 0;                                // two mbarriers (one per buffer)
  static constexpr int OFF_V = 128;  // two receive buffers: gathered v [BT][LDV] 16-bit, or partials [C][BT][U] fp32
  static constexpr int V_BYTES = RS ? C * BT * U * 4 : BT * LDV * 2;
  static constexpr int OFF_RED = align_up(OFF_V + 2 * V_BYTES, 128);  // partial sums [WK][BT][LDM] fp32
  static constexpr int RED_BYTES = WK * BT * LDM * 4;
  static constexpr int OFF_STAGE = align_up(OFF_RED + RED_BYTES, 128);  // the slice [BT][STAGE_LD] (RS: v itself)
  static constexpr int STAGE_LD = RS ? LDV : GP * U;
  static constexpr int STAGE_BYTES = BT * STAGE_LD * 2;
  static constexpr int OFF_W = align_up(OFF_STAGE + STAGE_BYTES, 128);  // A fragments [NW][MTW][KSM][32] x 16 B
  static constexpr int W_BYTES = NW * MTW * KSM * 32 * 16;
  static constexpr int SMEM = align_up(OFF_W + W_BYTES, 128);

  static_assert(H % C == 0 && U % 16 == 0, "units per CTA must be a multiple of 16");
  static_assert(DIR >= DIR_FWD && DIR <= DIR_BWD_RS, "direction 0, 1 or 2");
  static_assert(BT == 8 || BT == 16, "batch tile of 8 or 16 sequences");
  static_assert(NW % WM == 0 && MT % WM == 0 && KS % WK == 0, "warps must split the tiles evenly");
  static_assert(KREG >= 0 && KREG <= KSW, "register k-steps within the warp's k-steps");
  static_assert(AS >= 1 && AS <= 4, "1 to 4 accumulator sets");
  static_assert(C >= 1 && C <= 16, "cluster of 1 to 16 CTAs");
  static_assert(NTHREADS <= 1024, "at most 32 warps");
};

// The kernel's arguments, one struct for both directions (a launch reads the fields of its
// direction; the others are null).  All 16-bit tensors in the storage dtype; the last dimension of
// every tensor is contiguous; the strides are in elements.
struct Params {
  const u16* x;            // fwd: gx (T, B, G*H); bwd: d_out (T, B, H)
  i64 s_x_t, s_x_b;
  const u16* w;            // W_hh (G*H, H), contiguous
  const u16* bias;         // b_hh (G*H,) or null; only the inner-bias gate's block is read
  const u16* h0;           // (B, H) or null
  i64 s_h0_b;
  const u16* c0;           // (B, H) or null (LSTM)
  i64 s_c0_b;
  const i64* lengths;      // (B,) in 1..T or null
  const u16* d_hn;         // bwd: (B, H)
  i64 s_dhn_b;
  const u16* d_cn;         // bwd: (B, H) or null (LSTM)
  i64 s_dcn_b;
  const u16* d_cs;         // bwd: (T, B, H) gradient of every step's c_t, or null
  i64 s_dcs_t, s_dcs_b;
  const u16* out_in;       // bwd: the forward's out (T, B, H)
  i64 s_oi_t, s_oi_b;
  const float* saved_in;   // bwd: the forward's saved (T, B, S*H), contiguous
  u16* out;                // fwd: (T, B, H), contiguous
  u16* h_n;                // fwd: (B, H)
  u16* c_n;                // fwd: (B, H) (LSTM)
  float* saved;            // fwd: (T, B, S*H) or null
  u16* cs;                 // fwd: (T, B, H) every step's c_t, or null
  float* d_gx;             // bwd: (T, B, G*H), contiguous
  float* d_ghi;            // bwd: (T, B, H) GRU's n gate recurrent part, contiguous
  float* d_h0;             // bwd: (B, H)
  float* d_c0;             // bwd: (B, H) (LSTM)
  i32* status;             // 0 on success; 1 when an exchange timed out (outputs are then NaN)
  i32 T, B, reverse, pad_;
};

// ---------------------------------------------------------------------------------------------
// Index functions (pure; the simulator runs the kernel body that calls them)

// Element of W_hh (row-major (G*H, H)) at row m, column k of CTA `rank`'s A.
template <class CF>
FR_FN i64 w_index(int rank, int m, int k) {
  if (CF::DIR == DIR_FWD) {
    const int g = m / CF::U, u = m % CF::U;
    return (i64)(g * CF::H + rank * CF::U + u) * CF::H + k;
  }
  if (CF::RS) {
    const int g = k / CF::U, u = k % CF::U;
    return (i64)(g * CF::H + rank * CF::U + u) * CF::H + m;
  }
  return (i64)k * CF::H + rank * CF::U + m;
}

// mma.sync m16n8k16 A fragment (row-major 16x16): element `e` (0 low, 1 high half) of 32-bit
// register `r` of lane `lane` sits at (row, col) of the tile.
FR_FN void a_frag_rc(int lane, int r, int e, int& row, int& col) {
  row = (lane >> 2) + 8 * (r & 1);
  col = 2 * (lane & 3) + e + 8 * (r >> 1);
}

// Accumulator fragment (16x8 fp32): register r of lane `lane` at (row, col).
FR_FN void d_frag_rc(int lane, int r, int& row, int& col) {
  row = (lane >> 2) + 8 * (r >> 1);
  col = 2 * (lane & 3) + (r & 1);
}

// ldmatrix .x2 of the B operand (k16 x n8, "col": 16 k per sequence row): the row address lane
// `lane` supplies, as an element offset into a gathered buffer [BT][LDV], for n-tile nt and
// k-step starting at k0.  Lanes 0-7 address k0..k0+7, lanes 8-15 k0+8..k0+15 (16-31: ignored).
template <class CF>
FR_FN int ldsm_b_offset(int lane, int nt, int k0) {
  return (nt * 8 + (lane & 7)) * CF::LDV + k0 + 8 * ((lane >> 3) & 1);
}

// The warp's place in the product: rows of m-tile `mt` start at mt0 + 16*mt, k-step `ks` at k0.
template <class CF>
FR_FN int warp_m0(int warp) {
  return (warp % CF::WM) * CF::MTW * 16;
}
template <class CF>
FR_FN int warp_k0(int warp) {
  return (warp / CF::WM) * CF::KSW * 16;
}
template <class CF>
FR_FN int warp_wk(int warp) {
  return warp / CF::WM;
}

// Offset (16-byte units) of a warp's shared-memory A fragment (m-tile mt, k-step KREG + kk).
template <class CF>
FR_FN int wsm_index(int warp, int mt, int kk, int lane) {
  return ((warp * CF::MTW + mt) * CF::KSM + kk) * 32 + lane;
}

// The 4 registers of lane `lane`'s A fragment for (m-tile mt, k-step ks) of warp `warp`.
template <class CF>
FR_FN V4 load_a_frag(const u16* w, int rank, int warp, int lane, int mt, int ks) {
  const int m0 = warp_m0<CF>(warp) + 16 * mt, k0 = warp_k0<CF>(warp) + 16 * ks;
  u32 reg[4];
  for (int r = 0; r < 4; ++r) {
    int row, col;
    a_frag_rc(lane, r, 0, row, col);
    const u32 lo = w[w_index<CF>(rank, m0 + row, k0 + col)];
    a_frag_rc(lane, r, 1, row, col);
    const u32 hi = w[w_index<CF>(rank, m0 + row, k0 + col)];
    reg[r] = lo | (hi << 16);
  }
  V4 v = {reg[0], reg[1], reg[2], reg[3]};
  return v;
}

// Thread's j-th (unit, sequence) pair: u in [0, U), b in [0, BT); false when it has none.
template <class CF>
FR_FN bool pair_of(int tid, int j, int& u, int& b) {
  const int q = tid + j * CF::NTHREADS;
  u = q % CF::U;
  b = q / CF::U;
  return q < CF::PAIRS;
}

// Offset (16-bit elements) in the stage buffer [BT][STAGE_LD] of block g of pair (u, b).
template <class CF>
FR_FN int stage_offset(int u, int b, int g) {
  return b * CF::STAGE_LD + g * CF::U + u;
}

// Push item `it` (of CHUNKS * C): the 16-byte chunk it sends and to which CTA.  Returns false past
// the end.  All-gather: `src` in 16-bit elements into the stage buffer, `dst` into the receiving
// CTA's gathered buffer [BT][LDV] (sequence b, element g*H + rank*U + u).  Reduce-scatter: `src`
// in floats into a partial-sum block [BT][LDM] (sequence b, rows dst_rank*U + u .. + 3), `dst` into
// the receiver's buffer [C][BT][U] (this CTA's slot).
template <class CF>
FR_FN bool push_item(int it, int rank, int& dst_rank, int& src, int& dst) {
  if (it >= CF::CHUNKS * CF::C) return false;
  if (CF::RS) {
    const int q = it / CF::C, per_row = CF::U / 4;
    dst_rank = (rank + it % CF::C) % CF::C;
    const int u = (q % per_row) * 4, b = q / per_row;
    src = b * CF::LDM + dst_rank * CF::U + u;
    dst = (rank * CF::BT + b) * CF::U + u;
    return true;
  }
  const int q = it / CF::C;
  dst_rank = (rank + it % CF::C) % CF::C;
  const int per_row = CF::U / 8;
  const int u = (q % per_row) * 8, g = (q / per_row) % CF::GP, b = q / (per_row * CF::GP);
  src = stage_offset<CF>(u, b, g);
  dst = b * CF::LDV + g * CF::H + rank * CF::U + u;
  return true;
}

// Time slot of loop step s for a sequence of length len: (slot, active).  Inactive sequences (past
// their length) keep their state and write 0 to their own padding slot s.
FR_FN i64 time_slot(int s, i64 len, bool reverse, bool& active) {
  active = s < len;
  return active ? (reverse ? len - 1 - s : (i64)s) : (i64)s;
}

// Exchange i (0-based: the i-th time every CTA waits for a gathered buffer) uses buffer
// (i + 1) % 2 and completes that buffer's mbarrier phase i / 2: its parity.
FR_FN int exchange_buffer(int i) { return (i + 1) & 1; }
FR_FN u32 exchange_parity(int i) { return (u32)((i >> 1) & 1); }

}  // namespace fr
