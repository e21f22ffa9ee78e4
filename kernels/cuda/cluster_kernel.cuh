// fastrnn cluster tier: the forward and backward time loops of one cluster (one batch tile).
//
// Written once, as per-thread code, against an HW object that provides the hardware operations:
//
//   tid() rank() cluster() smem()           thread in CTA, CTA in cluster, cluster in grid, shared memory
//   sync()                                  __syncthreads
//   cluster_sync()                          barrier.cluster arrive (release) + wait (acquire)
//   mbar_init(bar, n) fence_mbar_init()     mbarrier.init, fence.mbarrier_init (cluster)
//   mbar_expect(bar, bytes)                 mbarrier.arrive.expect_tx (this CTA's barrier)
//   mbar_wait(bar, parity) -> bool          try_wait.parity (acquire, cluster scope) until that phase
//                                           completed; false if it timed out
//   st_async(dst_rank, ptr, v, bar)         st.async of 16 bytes to the same offset as ptr in CTA
//                                           dst_rank's shared memory, completing bytes on its bar
//   ldsm_x2(ptr, b0, b1)                    ldmatrix.x2 (each lane passes its row address)
//   mma<DT>(d, a, b0, b1)                   mma.sync m16n8k16 row.col, fp32 accumulate
//   lds128(ptr)                             16-byte shared-memory load
//
// cluster_device.cuh implements it with inline PTX; the simulator (cluster_sim.cpp) with a model
// of the PTX ISA run on the host, every thread of every CTA of a cluster in lockstep.
//
// Per step: one mbarrier wait (the gathered vector of the previous step arrived in this CTA's
// buffer; a cluster of one CTA has no wait and a third __syncthreads instead), the warps' mma over their tiles into fp32 partial sums, __syncthreads, each thread's
// (unit, sequence) pairs: sum of the partials, the cell, the global stores, the new values into
// the stage buffer, __syncthreads, then every thread pushes 16-byte pieces of the stage buffer into
// the other buffer of every CTA of the cluster (st.async; completion on that CTA's mbarrier with
// expect-tx).  Two buffers make the exchange race-free without a cluster barrier: a CTA writes into
// buffer k of CTA d only after it received d's previous piece, which d sent after its last read of
// buffer k.
#pragma once
#include "cluster_common.cuh"

namespace fr {

template <class CF>
struct Smem {
  char* base;
  FR_FN u64* bar(int k) const { return reinterpret_cast<u64*>(base + CF::OFF_BAR) + k; }
  FR_FN u16* vec(int k) const { return reinterpret_cast<u16*>(base + CF::OFF_V + k * CF::V_BYTES); }
  FR_FN float* red(int wk) const { return reinterpret_cast<float*>(base + CF::OFF_RED) + wk * CF::BT * CF::LDM; }
  FR_FN u16* stage() const { return reinterpret_cast<u16*>(base + CF::OFF_STAGE); }
  FR_FN V4* wsm() const { return reinterpret_cast<V4*>(base + CF::OFF_W); }
};

// A: the registers' share of the warp's fragments (KREG k-steps); the rest goes to shared memory.
template <class CF>
struct AFrags {
  V4 r[CF::MTW][CF::KREG > 0 ? CF::KREG : 1];
};

// The start of both passes: thread 0 sets up the exchange's two mbarriers, then the CTA loads its
// rows of W_hh as A fragments, into registers and (past KREG k-steps) shared memory.
template <class CF, class HW>
FR_FN AFrags<CF> start_cta(HW& hw, const Smem<CF>& sm, const u16* w, int rank, int tid) {
  AFrags<CF> a;
  if (tid == 0) {
    hw.mbar_init(sm.bar(0), 1);
    hw.mbar_init(sm.bar(1), 1);
    hw.fence_mbar_init();
  }
  const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int mt = 0; mt < CF::MTW; ++mt) {
#pragma unroll
    for (int ks = 0; ks < CF::KREG; ++ks) a.r[mt][ks] = load_a_frag<CF>(w, rank, warp, lane, mt, ks);
  }
  if constexpr (CF::KSM > 0) {
    constexpr int n_smem = CF::NW * CF::MTW * CF::KSM * 32;
    for (int idx = tid; idx < n_smem; idx += CF::NTHREADS) {
      const int ln = idx % 32, kk = (idx / 32) % CF::KSM, mt = (idx / (32 * CF::KSM)) % CF::MTW;
      const int wp = idx / (32 * CF::KSM * CF::MTW);
      sm.wsm()[wsm_index<CF>(wp, mt, kk, ln)] = load_a_frag<CF>(w, rank, wp, ln, mt, CF::KREG + kk);
    }
  }
  return a;
}

// Pair j of thread tid (pair_of) as the batch row and hidden unit it stands for; false where the
// thread has no pair j or its row is past the batch.
template <class CF>
FR_FN bool pair_in_batch(int tid, int j, int rank, int tile, int B, int& row, int& unit) {
  int u, b;
  const bool mine = pair_of<CF>(tid, j, u, b);
  row = tile * CF::BT + b;
  unit = rank * CF::U + u;
  return mine && row < B;
}

// The warp's share of "A @ v^T" (v: [BT][LDV] 16-bit in shared memory), summed into partial-sum
// block wk.
template <class CF, class HW>
FR_FN void mma_phase(HW& hw, const Smem<CF>& sm, const u16* v, int tid, const AFrags<CF>& a) {
  const int lane = tid & 31, warp = tid >> 5;
  const int m0 = warp_m0<CF>(warp), k0 = warp_k0<CF>(warp);
  float acc[CF::AS][CF::MTW][CF::NT][4];
#pragma unroll
  for (int s = 0; s < CF::AS; ++s)
#pragma unroll
    for (int mt = 0; mt < CF::MTW; ++mt)
#pragma unroll
      for (int nt = 0; nt < CF::NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[s][mt][nt][r] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < CF::KSW; ++ks) {
    u32 b[CF::NT][2];
#pragma unroll
    for (int nt = 0; nt < CF::NT; ++nt) hw.ldsm_x2(v + ldsm_b_offset<CF>(lane, nt, k0 + 16 * ks), b[nt][0], b[nt][1]);
#pragma unroll
    for (int mt = 0; mt < CF::MTW; ++mt) {
      V4 f;
      if (ks < CF::KREG) {
        f = a.r[mt][ks < CF::KREG ? ks : 0];
      } else {
        f = hw.lds128(sm.wsm() + wsm_index<CF>(warp, mt, ks - CF::KREG, lane));
      }
#pragma unroll
      for (int nt = 0; nt < CF::NT; ++nt) hw.template mma<CF::DT>(acc[ks % CF::AS][mt][nt], f, b[nt][0], b[nt][1]);
    }
  }
  float* red = sm.red(warp_wk<CF>(warp));
#pragma unroll
  for (int mt = 0; mt < CF::MTW; ++mt)
#pragma unroll
    for (int nt = 0; nt < CF::NT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int row, col;
        d_frag_rc(lane, r, row, col);
        float sum = acc[0][mt][nt][r];
#pragma unroll
        for (int s = 1; s < CF::AS; ++s) sum += acc[s][mt][nt][r];
        red[(nt * 8 + col) * CF::LDM + m0 + 16 * mt + row] = sum;
      }
}

// Row m of the product for sequence b: the WK partial sums added.
template <class CF>
FR_FN float product(const Smem<CF>& sm, int m, int b) {
  float s = 0.0f;
#pragma unroll
  for (int wk = 0; wk < CF::WK; ++wk) s += sm.red(wk)[b * CF::LDM + m];
  return s;
}

// Reduce-scatter: dh of unit u of this CTA for sequence b, the C partial sums received in `buf`.
template <class CF>
FR_FN float received(const Smem<CF>& sm, int buf, int u, int b) {
  const float* r = reinterpret_cast<const float*>(sm.vec(buf));
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < CF::C; ++c) s += r[(c * CF::BT + b) * CF::U + u];
  return s;
}

// The 16 bytes of push item (src): the stage slice (all-gather), or 4 rows of the product summed
// over the WK partial-sum blocks (reduce-scatter).
template <class CF, class HW>
FR_FN V4 push_value(HW& hw, const Smem<CF>& sm, int src) {
  if constexpr (CF::RS) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int wk = 0; wk < CF::WK; ++wk) {
      const V4 q = hw.lds128(reinterpret_cast<const V4*>(sm.red(wk) + src));
      v[0] += bits_as_float(q.x);
      v[1] += bits_as_float(q.y);
      v[2] += bits_as_float(q.z);
      v[3] += bits_as_float(q.w);
    }
    V4 out = {float_as_bits(v[0]), float_as_bits(v[1]), float_as_bits(v[2]), float_as_bits(v[3])};
    return out;
  } else {
    return hw.lds128(reinterpret_cast<const V4*>(sm.stage() + src));
  }
}

// Push the CTA's slice (the stage buffer) into gathered buffer `nxt` of every CTA of the cluster.
template <class CF, class HW>
FR_FN void push_phase(HW& hw, const Smem<CF>& sm, int nxt, int rank, int tid) {
  u64* bar = sm.bar(nxt);
  for (int it = tid;; it += CF::NTHREADS) {
    int dst_rank, src, dst;
    if (!push_item<CF>(it, rank, dst_rank, src, dst)) break;
    const V4 v = push_value<CF>(hw, sm, src);
    if constexpr (CF::RS) {
      hw.st_async(dst_rank, reinterpret_cast<float*>(sm.vec(nxt)) + dst, v, bar);
    } else {
      hw.st_async(dst_rank, sm.vec(nxt) + dst, v, bar);
    }
  }
}

// Exchange the CTA's slice (the stage buffer, complete) into gathered buffer `nxt` of every CTA:
// st.async, completing on the receiver's mbarrier, which tid 0 armed for this exchange.  A cluster
// of one CTA (st.async is undefined there) copies locally and ends with __syncthreads instead, and
// its next step does not wait on the mbarrier.
template <class CF, class HW>
FR_FN void exchange(HW& hw, const Smem<CF>& sm, int i, int rank, int tid) {
  const int nxt = exchange_buffer(i);
  if constexpr (CF::C > 1) {
    if (tid == 0) hw.mbar_expect(sm.bar(nxt), CF::BYTES);
    hw.sync();
    push_phase<CF>(hw, sm, nxt, rank, tid);
  } else {
    hw.sync();
    for (int it = tid;; it += CF::NTHREADS) {
      int dst_rank, src, dst;
      if (!push_item<CF>(it, rank, dst_rank, src, dst)) break;
      const V4 v = push_value<CF>(hw, sm, src);
      if constexpr (CF::RS) {
        *reinterpret_cast<V4*>(reinterpret_cast<float*>(sm.vec(nxt)) + dst) = v;
      } else {
        *reinterpret_cast<V4*>(sm.vec(nxt) + dst) = v;
      }
    }
    hw.sync();
  }
}

// Reduce-scatter backward: the product of the CTA's own dpre (the stage buffer, complete after a
// __syncthreads) with its W_hh rows, then its exchange (which starts with __syncthreads: the
// partial sums complete).
template <class CF, class HW>
FR_FN void reduce_exchange(HW& hw, const Smem<CF>& sm, int i, int rank, int tid, const AFrags<CF>& a) {
  hw.sync();
  mma_phase<CF>(hw, sm, sm.stage(), tid, a);
  exchange<CF>(hw, sm, i, rank, tid);
}

// The wait of step i (> 0) for the vector exchanged after step i - 1 (none in a cluster of one).
template <class CF, class HW>
FR_FN bool await(HW& hw, const Smem<CF>& sm, int i) {
  if constexpr (CF::C > 1) {
    return hw.mbar_wait(sm.bar(exchange_buffer(i - 1)), exchange_parity(i - 1));
  } else {
    return true;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward: out, h_n, c_n, the saved tensors and (asked for) every step's c_t.

template <class CF, class HW>
FR_FN void forward_body(const Params& p, HW& hw) {
  typedef typename CF::CellT CellT;
  constexpr int G = CF::G, S = CF::S, H = CF::H, U = CF::U, PP = CF::PP, DT = CF::DT;
  const Smem<CF> sm = {hw.smem()};
  const int tid = hw.tid(), rank = hw.rank(), tile = hw.cluster();
  const int T = p.T, B = p.B;
  const bool reverse = p.reverse != 0;

  const AFrags<CF> a = start_cta<CF>(hw, sm, p.w, rank, tid);
  // h_{-1} (h0 or zeros) of the whole tile into buffer 0: the first step needs no exchange
  for (int e = tid; e < CF::BT * H; e += CF::NTHREADS) {
    const int b = e / H, k = e % H, row = tile * CF::BT + b;
    sm.vec(0)[b * CF::LDV + k] = (p.h0 != nullptr && row < B) ? p.h0[(i64)row * p.s_h0_b + k] : (u16)0;
  }
  // the thread's pairs: state in fp32 registers, next step's input parts loaded a step ahead
  float h[PP], c[PP], bhn[PP];
  i64 len[PP];
  u16 px_next[PP][G];
#pragma unroll
  for (int j = 0; j < PP; ++j) {
    int row, unit;
    const bool valid = pair_in_batch<CF>(tid, j, rank, tile, B, row, unit);
    len[j] = valid ? (p.lengths != nullptr ? p.lengths[row] : (i64)T) : 0;
    h[j] = (valid && p.h0 != nullptr) ? to_f32<DT>(p.h0[(i64)row * p.s_h0_b + unit]) : 0.0f;
    c[j] = (valid && CellT::HAS_C && p.c0 != nullptr) ? to_f32<DT>(p.c0[(i64)row * p.s_c0_b + unit]) : 0.0f;
    bhn[j] = (valid && CellT::INNER >= 0 && p.bias != nullptr) ? to_f32<DT>(p.bias[CellT::INNER * H + unit]) : 0.0f;
    bool act;
    const i64 t = time_slot(0, len[j], reverse, act);
#pragma unroll
    for (int g = 0; g < G; ++g)
      px_next[j][g] = (valid && act) ? p.x[t * p.s_x_t + (i64)row * p.s_x_b + g * H + unit] : (u16)0;
  }
  hw.cluster_sync();  // every CTA's barriers initialised, buffer 0 and the weights in place

  bool failed = false;
  for (int s = 0; s < T; ++s) {
    const int cur = s & 1;
    if (s > 0 && !failed && !await<CF>(hw, sm, s)) failed = true;  // once failed, no more waiting
    mma_phase<CF>(hw, sm, sm.vec(cur), tid, a);
    hw.sync();
#pragma unroll
    for (int j = 0; j < PP; ++j) {
      int u, b;
      if (!pair_of<CF>(tid, j, u, b)) continue;
      const int row = tile * CF::BT + b, unit = rank * U + u;
      float px[G], ph[G], sv[S > 0 ? S : 1], m, c_new;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        px[g] = to_f32<DT>(px_next[j][g]);
        ph[g] = product<CF>(sm, g * U + u, b) + (g == CellT::INNER ? bhn[j] : 0.0f);
      }
      CellT::forward(px, ph, h[j], c[j], m, c_new, sv);
      if (failed) m = c_new = fr_nan();
      bool act;
      const i64 t = time_slot(s, len[j], reverse, act);
      if (row < B) {
        const i64 o = (t * B + row) * H + unit;
        p.out[o] = to_storage<DT>(act ? m : 0.0f);
        if (p.saved != nullptr) {
#pragma unroll
          for (int k = 0; k < S; ++k) p.saved[(t * B + row) * (S * H) + k * H + unit] = act ? sv[k] : 0.0f;
        }
        if (CellT::HAS_C && p.cs != nullptr) p.cs[o] = to_storage<DT>(act ? c_new : 0.0f);
      }
      if (act) {
        h[j] = m;
        c[j] = c_new;
      }
      sm.stage()[stage_offset<CF>(u, b, 0)] = to_storage<DT>(h[j]);
      // the next step's input parts (nothing past the last step)
      bool act_n;
      const i64 t_n = time_slot(s + 1, len[j], reverse, act_n);
      act_n = act_n && s + 1 < T && row < B;
#pragma unroll
      for (int g = 0; g < G; ++g)
        px_next[j][g] = act_n ? p.x[t_n * p.s_x_t + (i64)row * p.s_x_b + g * H + unit] : (u16)0;
    }
    if (s + 1 < T) exchange<CF>(hw, sm, s, rank, tid);
  }
#pragma unroll
  for (int j = 0; j < PP; ++j) {
    int row, unit;
    if (!pair_in_batch<CF>(tid, j, rank, tile, B, row, unit)) continue;
    p.h_n[(i64)row * H + unit] = to_storage<DT>(h[j]);
    if (CellT::HAS_C) p.c_n[(i64)row * H + unit] = to_storage<DT>(c[j]);
  }
  if (failed && tid == 0 && p.status != nullptr) *p.status = 1;
  hw.cluster_sync();  // no CTA leaves while another may still address its shared memory
}

// ---------------------------------------------------------------------------------------------
// Backward: d_gx (and GRU's n-gate recurrent part), d_h0, d_c0.  Iteration i (0..T) first finishes
// step T - i (dh of its predecessor = dpre of step T - i times W_hh, plus the cell's direct part),
// then runs the cell backward of step T - 1 - i and exchanges its dpre: all-gather (DIR 1: every CTA
// receives all of dpre and multiplies it with its W_hh columns at the start of the next iteration)
// or reduce-scatter (DIR 2: each CTA multiplies its own dpre with its W_hh rows at once and sends
// every CTA the fp32 partial sums of that CTA's units).

template <class CF, class HW>
FR_FN void backward_body(const Params& p, HW& hw) {
  typedef typename CF::CellT CellT;
  constexpr int G = CF::G, S = CF::S, H = CF::H, U = CF::U, PP = CF::PP, DT = CF::DT;
  constexpr int SV = S > 0 ? S : 1;
  const Smem<CF> sm = {hw.smem()};
  const int tid = hw.tid(), rank = hw.rank(), tile = hw.cluster();
  const int T = p.T, B = p.B;
  const bool reverse = p.reverse != 0;

  const AFrags<CF> a = start_cta<CF>(hw, sm, p.w, rank, tid);

  float dh[PP], dc[PP], h_init[PP], c_init[PP];
  float dhd1[PP], dcp1[PP];  // the finished step's direct dh and dc_{t-1}
  bool keep1[PP];
  i64 len[PP];
  // the next step's loads: d_out, saved, h_t, h_{t-1}, c_{t-1}, d_cs
  u16 ld_dout[PP], ld_hnew[PP], ld_hprev[PP], ld_dcs[PP];
  float ld_sv[PP][SV], ld_cprev[PP];
#pragma unroll
  for (int j = 0; j < PP; ++j) {
    int row, unit;
    const bool valid = pair_in_batch<CF>(tid, j, rank, tile, B, row, unit);
    len[j] = valid ? (p.lengths != nullptr ? p.lengths[row] : (i64)T) : 0;
    dh[j] = valid ? to_f32<DT>(p.d_hn[(i64)row * p.s_dhn_b + unit]) : 0.0f;
    dc[j] = (valid && CellT::HAS_C && p.d_cn != nullptr) ? to_f32<DT>(p.d_cn[(i64)row * p.s_dcn_b + unit]) : 0.0f;
    h_init[j] = (valid && p.h0 != nullptr) ? to_f32<DT>(p.h0[(i64)row * p.s_h0_b + unit]) : 0.0f;
    c_init[j] = (valid && CellT::HAS_C && p.c0 != nullptr) ? to_f32<DT>(p.c0[(i64)row * p.s_c0_b + unit]) : 0.0f;
    keep1[j] = false;
    dhd1[j] = dcp1[j] = 0.0f;
  }
  // step s's loads for pair j (zeros where inactive; nothing for s < 0)
  auto load_step = [&](int j, int s) {
    int u, b;
    const bool mine = pair_of<CF>(tid, j, u, b);
    const int row = tile * CF::BT + b, unit = rank * U + u;
    bool act;
    const i64 t = time_slot(s, len[j], reverse, act);
    act = act && mine && row < B && s >= 0;
    const i64 tp = reverse ? t + 1 : t - 1;
    const bool prev = act && tp >= 0 && tp < len[j];
    ld_dout[j] = act ? p.x[t * p.s_x_t + (i64)row * p.s_x_b + unit] : (u16)0;
#pragma unroll
    for (int k = 0; k < S; ++k) ld_sv[j][k] = act ? p.saved_in[(t * B + row) * (S * H) + k * H + unit] : 0.0f;
    ld_hnew[j] = (CellT::READ_H_NEW && act) ? p.out_in[t * p.s_oi_t + (i64)row * p.s_oi_b + unit] : (u16)0;
    ld_hprev[j] = (CellT::READ_H_PREV && prev) ? p.out_in[tp * p.s_oi_t + (i64)row * p.s_oi_b + unit] : (u16)0;
    ld_cprev[j] = 0.0f;
    if (CellT::HAS_C && prev) ld_cprev[j] = p.saved_in[(tp * B + row) * (S * H) + (S - 1) * H + unit];
    ld_dcs[j] = (CellT::HAS_C && act && p.d_cs != nullptr) ? p.d_cs[t * p.s_dcs_t + (i64)row * p.s_dcs_b + unit]
                                                            : (u16)0;
  };
#pragma unroll
  for (int j = 0; j < PP; ++j) load_step(j, T - 1);
  hw.cluster_sync();

  bool failed = false;
  for (int i = 0; i <= T; ++i) {
    const int cur = i & 1;
    if (i > 0) {
      if (!failed && !await<CF>(hw, sm, i)) failed = true;  // once failed, no more waiting
      if constexpr (!CF::RS) {
        mma_phase<CF>(hw, sm, sm.vec(cur), tid, a);
        hw.sync();
      }
    }
    const int s = T - 1 - i;
#pragma unroll
    for (int j = 0; j < PP; ++j) {
      int u, b;
      if (!pair_of<CF>(tid, j, u, b)) continue;
      const int row = tile * CF::BT + b, unit = rank * U + u;
      if (i > 0 && keep1[j]) {  // finish step s + 1: its predecessor's dh and dc
        const float rec = CF::RS ? received<CF>(sm, cur, u, b) : product<CF>(sm, u, b);
        dh[j] = failed ? fr_nan() : rec + dhd1[j];
        if (CellT::HAS_C) dc[j] = dcp1[j];
      }
      if (s < 0) continue;
      bool act;
      const i64 t = time_slot(s, len[j], reverse, act);
      const i64 tp = reverse ? t + 1 : t - 1;
      const bool prev = act && tp >= 0 && tp < len[j];
      dh[j] += to_f32<DT>(ld_dout[j]);
      if (CellT::HAS_C) dc[j] += to_f32<DT>(ld_dcs[j]);
      const float h_new = to_f32<DT>(ld_hnew[j]);
      const float h_prev = prev ? to_f32<DT>(ld_hprev[j]) : h_init[j];
      const float c_prev = prev ? ld_cprev[j] : c_init[j];
      float d_px[G], d_ph[G], dh_direct, dc_prev;
      CellT::backward(dh[j], dc[j], ld_sv[j], h_new, h_prev, c_prev, d_px, d_ph, dh_direct, dc_prev);
      if (row < B) {
#pragma unroll
        for (int g = 0; g < G; ++g) p.d_gx[(t * B + row) * (G * H) + g * H + unit] = act ? d_px[g] : 0.0f;
        if (CellT::INNER >= 0) p.d_ghi[(t * B + row) * H + unit] = act ? d_ph[CellT::INNER] : 0.0f;
      }
#pragma unroll
      for (int g = 0; g < G; ++g) sm.stage()[stage_offset<CF>(u, b, g)] = to_storage<DT>(act ? d_ph[g] : 0.0f);
      keep1[j] = act;
      dhd1[j] = dh_direct;
      dcp1[j] = dc_prev;
      load_step(j, s - 1);
    }
    if (i < T) {
      if constexpr (CF::RS) {
        reduce_exchange<CF>(hw, sm, i, rank, tid, a);
      } else {
        exchange<CF>(hw, sm, i, rank, tid);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < PP; ++j) {
    int row, unit;
    if (!pair_in_batch<CF>(tid, j, rank, tile, B, row, unit)) continue;
    p.d_h0[(i64)row * H + unit] = dh[j];
    if (CellT::HAS_C) p.d_c0[(i64)row * H + unit] = dc[j];
  }
  if (failed && tid == 0 && p.status != nullptr) *p.status = 1;
  hw.cluster_sync();
}

template <class CF, class HW>
FR_FN void run(const Params& p, HW& hw) {
  if constexpr (CF::DIR == DIR_FWD) {
    forward_body<CF>(p, hw);
  } else {
    backward_body<CF>(p, hw);
  }
}

}  // namespace fr
