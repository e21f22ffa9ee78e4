// fastrnn cluster tier: a host simulator of one thread-block cluster running cluster_kernel.cuh.
//
// Every thread of every CTA of a cluster is a user-level context (ucontext) running the kernel
// body itself (fr::run<Cfg, SimHW>), compiled by the host compiler.  A scheduler picks a random
// runnable thread (seeded) and runs it until its next hardware operation, so CTAs and warps
// interleave in many orders.  The hardware operations are modelled from the PTX ISA, independently
// of the kernel's own index functions:
//
//   ldmatrix .x2, mma.sync m16n8k16   warp-collective: the 32 lanes block until all arrived, then the
//                                     operation runs on all of their operands at once, with the
//                                     fragment layouts of the PTX ISA's tables (element indices a0..a7,
//                                     b0..b3, c0..c3; rows from the lanes' addresses)
//   __syncthreads, barrier.cluster    block until every thread of the CTA / cluster arrived
//   mbarrier                          a phase counter, pending arrivals and a signed tx byte count;
//                                     a wait blocks until the phase of its parity completed, and the
//                                     simulator checks that it completed exactly once more than
//                                     this thread's previous wait saw (a barrier that runs ahead
//                                     means data was overwritten before it was read)
//   st.async                          a 16-byte copy into the same offset of the destination CTA's
//                                     shared memory, then complete_tx(16) on its barrier; it must
//                                     land inside the gathered buffer that barrier guards
//
// Shared memory starts as 0xFF bytes (NaN in fp16/bf16/fp32), with guard bytes on both sides
// checked after the run; shared-memory accesses through the modelled operations are range-checked.
#pragma once
#include <ucontext.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cluster_kernel.cuh"

namespace frsim {

using fr::u16;
using fr::u32;
using fr::u64;
using fr::V4;

enum State { RUNNABLE, WARP_OP, CTA_SYNC, CLUSTER_SYNC, MBAR_WAIT, DONE };
enum Op { OP_NONE = 0, OP_LDSM_X2, OP_MMA_F16, OP_MMA_BF16 };

constexpr int GUARD = 256;
constexpr size_t STACK_BYTES = 96 * 1024;
constexpr size_t STACK_CANARY = 4096;  // bytes at the bottom of each stack checked after the run

struct Thread {
  ucontext_t ctx;
  char* stack = nullptr;
  int cta = 0, tid = 0;
  State state = RUNNABLE;
  bool queued = false;
  // a warp operation: its kind, sequence number and operands / results
  int op = OP_NONE;
  long op_seq = 0;
  long op_offset = 0;  // ldmatrix: byte offset of the lane's row in its CTA's shared memory
  u32 a[4] = {0, 0, 0, 0}, b[2] = {0, 0}, res[2] = {0, 0};
  float d[4] = {0, 0, 0, 0};
  // an mbarrier wait
  int wait_bar = -1;
  u32 wait_parity = 0;
  long waits_done[2] = {0, 0};
};

struct Bar {
  bool init = false;
  int count = 0, pending = 0;
  long long tx = 0;
  long phase = 0;
};

template <class CF>
struct Sim;

struct SimBase {
  int C = 1, NT = 32, smem_bytes = 0, cluster_index = 0;
  std::vector<std::vector<unsigned char>> smem;
  std::vector<Thread> threads;
  std::vector<Bar> bars;  // 2 per CTA
  std::vector<Thread*> runnable;
  std::vector<int> warp_arrived, cta_arrived;
  int cluster_arrived = 0;
  std::mt19937 rng;
  ucontext_t sched;
  Thread* cur = nullptr;
  std::string error;
  long switches = 0;
  int off_bar = 0, off_v = 0, v_bytes = 0;

  unsigned char* base(int cta) { return smem[cta].data() + GUARD; }
  void fail(const std::string& msg) {
    if (error.empty()) error = msg;
    cur->state = DONE;
    swapcontext(&cur->ctx, &sched);
  }
  void make_runnable(Thread* t) {
    t->state = RUNNABLE;
    if (!t->queued) {
      t->queued = true;
      runnable.push_back(t);
    }
  }
  void yield() { swapcontext(&cur->ctx, &sched); }
  long offset_of(const void* p, size_t n) {
    const long off = (long)((const unsigned char*)p - base(cur->cta));
    if (off < 0 || off + (long)n > smem_bytes) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "CTA %d thread %d: shared-memory access at offset %ld (+%zu) outside 0..%d",
                    cur->cta, cur->tid, off, n, smem_bytes);
      fail(buf);
    }
    return off;
  }
  int bar_index(const void* bar) {
    const long off = offset_of(bar, 8);
    const long k = (off - off_bar) / 8;
    if ((off - off_bar) % 8 != 0 || k < 0 || k > 1) {
      char buf[120];
      std::snprintf(buf, sizeof buf, "CTA %d thread %d: no mbarrier at offset %ld", cur->cta, cur->tid, off);
      fail(buf);
    }
    return (int)k;
  }
  void complete_check(int cta, int k) {
    Bar& B = bars[cta * 2 + k];
    if (B.pending == 0 && B.tx == 0) {
      ++B.phase;
      B.pending = B.count;
      for (Thread& t : threads)
        if (t.cta == cta && t.state == MBAR_WAIT && t.wait_bar == k && (u32)(B.phase & 1) != t.wait_parity)
          make_runnable(&t);
    }
  }
  void run_warp_op(int cta, int warp);
};

// ldmatrix .x2 and mma.sync m16n8k16 of the 32 lanes of a warp, from the PTX ISA's fragment
// tables (groupID = lane >> 2, threadID_in_group = lane % 4).
inline void SimBase::run_warp_op(int cta, int warp) {
  Thread* lanes[32];
  for (int l = 0; l < 32; ++l) lanes[l] = &threads[(cta * NT) + warp * 32 + l];
  const int op = lanes[0]->op;
  for (int l = 1; l < 32; ++l) {
    if (lanes[l]->op != op || lanes[l]->op_seq != lanes[0]->op_seq) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "CTA %d warp %d: lanes reached different warp operations (%d #%ld, %d #%ld)", cta,
                    warp, op, lanes[0]->op_seq, lanes[l]->op, lanes[l]->op_seq);
      error = buf;
      return;
    }
  }
  if (op == OP_LDSM_X2) {
    // matrix i (i = 0, 1): row r at the address of thread 8 i + r; each row 8 contiguous b16.
    // Thread `lane` receives in register i the elements (lane / 4, 2 (lane % 4)) and (+1) of matrix i.
    const unsigned char* s = base(cta);
    for (int l = 0; l < 32; ++l) {
      for (int i = 0; i < 2; ++i) {
        const long row_off = lanes[8 * i + l / 4]->op_offset;
        if (row_off % 16 != 0) {
          error = "ldmatrix row address not 16-byte aligned";
          return;
        }
        u16 e0, e1;
        std::memcpy(&e0, s + row_off + 2 * (2 * (l % 4)), 2);
        std::memcpy(&e1, s + row_off + 2 * (2 * (l % 4) + 1), 2);
        lanes[l]->res[i] = (u32)e0 | ((u32)e1 << 16);
      }
    }
  } else if (op == OP_MMA_F16 || op == OP_MMA_BF16) {
    // A 16x16: a_i (i = 0..7, register i / 2, half i % 2) at row groupID (+8 for i in {2,3,6,7}),
    // column 2 threadID_in_group + (i & 1) (+8 for i >= 4).  B 16x8: b_i (register i / 2) at row
    // 2 threadID_in_group + (i & 1) (+8 for i >= 2), column groupID.  C/D 16x8: c_i at row groupID
    // (+8 for i >= 2), column 2 threadID_in_group + (i & 1).
    double A[16][16], Bm[16][8];
    for (int l = 0; l < 32; ++l) {
      const int gid = l >> 2, tig = l & 3;
      for (int i = 0; i < 8; ++i) {
        const u32 reg = lanes[l]->a[i / 2];
        const u16 bits = (u16)((i % 2) ? (reg >> 16) : (reg & 0xffffu));
        const int row = gid + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
        const int col = 2 * tig + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] = op == OP_MMA_F16 ? fr::f16_to_f32(bits) : fr::bits_f32((u32)bits << 16);
      }
      for (int i = 0; i < 4; ++i) {
        const u32 reg = lanes[l]->b[i / 2];
        const u16 bits = (u16)((i % 2) ? (reg >> 16) : (reg & 0xffffu));
        const int row = 2 * tig + (i & 1) + (i >= 2 ? 8 : 0);
        Bm[row][gid] = op == OP_MMA_F16 ? fr::f16_to_f32(bits) : fr::bits_f32((u32)bits << 16);
      }
    }
    for (int l = 0; l < 32; ++l) {
      const int gid = l >> 2, tig = l & 3;
      for (int i = 0; i < 4; ++i) {
        const int row = gid + (i >= 2 ? 8 : 0), col = 2 * tig + (i & 1);
        double sum = lanes[l]->d[i];
        for (int k = 0; k < 16; ++k) sum += A[row][k] * Bm[k][col];
        lanes[l]->d[i] = (float)sum;
      }
    }
  } else {
    error = "unknown warp operation";
    return;
  }
  for (int l = 0; l < 32; ++l) {
    lanes[l]->op = OP_NONE;
    make_runnable(lanes[l]);
  }
}

inline SimBase*& current_sim() {
  static SimBase* s = nullptr;
  return s;
}

// Fault injection: every thread of CTA `cta` finds its `wait`-th mbarrier wait (1-based) timed out
// (as the device's 2-second limit would), without the phase completing.  -1: none.
struct TimeoutInjection {
  int cta = -1;
  long wait = -1;
};
inline TimeoutInjection& injected_timeout() {
  static TimeoutInjection t;
  return t;
}

// The HW interface of cluster_kernel.cuh, on the simulator.
struct SimHW {
  SimBase& S;
  explicit SimHW(SimBase& s) : S(s) {}
  int tid() const { return S.cur->tid; }
  int rank() const { return S.cur->cta; }
  int cluster() const { return S.cluster_index; }
  char* smem() const { return (char*)S.base(S.cur->cta); }
  void sync() const {
    Thread* t = S.cur;
    t->state = CTA_SYNC;
    if (++S.cta_arrived[t->cta] == S.NT) {
      S.cta_arrived[t->cta] = 0;
      for (Thread& o : S.threads)
        if (o.cta == t->cta && o.state == CTA_SYNC) S.make_runnable(&o);
    }
    S.yield();
  }
  void cluster_sync() const {
    Thread* t = S.cur;
    t->state = CLUSTER_SYNC;
    if (++S.cluster_arrived == S.NT * S.C) {
      S.cluster_arrived = 0;
      for (Thread& o : S.threads)
        if (o.state == CLUSTER_SYNC) S.make_runnable(&o);
    }
    S.yield();
  }
  void mbar_init(u64* bar, u32 count) const {
    Bar& B = S.bars[S.cur->cta * 2 + S.bar_index(bar)];
    B.init = true;
    B.count = B.pending = (int)count;
    B.tx = 0;
    B.phase = 0;
  }
  void fence_mbar_init() const {}
  void mbar_expect(u64* bar, u32 bytes) const {
    const int k = S.bar_index(bar), cta = S.cur->cta;
    Bar& B = S.bars[cta * 2 + k];
    if (!B.init) S.fail("arrive.expect_tx on an uninitialised mbarrier");
    B.tx += bytes;
    if (--B.pending < 0) S.fail("more arrivals than the mbarrier's count");
    S.complete_check(cta, k);
    S.make_runnable(S.cur);
    S.yield();
  }
  bool mbar_wait(u64* bar, u32 parity) const {
    Thread* t = S.cur;
    const int k = S.bar_index(bar);
    Bar& B = S.bars[t->cta * 2 + k];
    if (!B.init) S.fail("wait on an uninitialised mbarrier");
    const TimeoutInjection& inj = injected_timeout();
    if (t->cta == inj.cta && t->waits_done[0] + t->waits_done[1] + 1 == inj.wait) {
      t->waits_done[0] = t->waits_done[1] = -1000000;  // its later waits are not checked
      return false;
    }
    if ((u32)(B.phase & 1) == parity) {
      t->state = MBAR_WAIT;
      t->wait_bar = k;
      t->wait_parity = parity;
      S.yield();
    }
    // this thread's n-th wait on barrier k must find exactly n + 1 completed phases
    const long expected = ++t->waits_done[k];
    if (B.phase != expected) {
      char buf[200];
      std::snprintf(buf, sizeof buf,
                    "CTA %d thread %d: wait #%ld on mbarrier %d found %ld completed phases (a buffer was refilled "
                    "before it was read, or a wait was skipped)",
                    t->cta, t->tid, expected, k, B.phase);
      S.fail(buf);
    }
    return true;
  }
  void st_async(int dst_rank, const void* local, const V4& v, const u64* local_bar) const {
    const long off = S.offset_of(local, 16);
    const int k = S.bar_index(local_bar);
    if (S.C < 2) S.fail("st.async in a cluster of one CTA (undefined in the PTX ISA: %cluster_nctarank must be > 1)");
    if (dst_rank < 0 || dst_rank >= S.C) S.fail("st.async to a CTA outside the cluster");
    const long lo = S.off_v + (long)k * S.v_bytes;
    if (off < lo || off + 16 > lo + S.v_bytes) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "st.async at offset %ld lands outside gathered buffer %d (%ld..%ld)", off, k, lo,
                    lo + S.v_bytes);
      S.fail(buf);
    }
    if (off % 16 != 0) S.fail("st.async .v4.b32 destination not 16-byte aligned");
    std::memcpy(S.base(dst_rank) + off, &v, 16);
    Bar& B = S.bars[dst_rank * 2 + k];
    if (!B.init) S.fail("st.async completes bytes on an uninitialised mbarrier");
    B.tx -= 16;
    S.complete_check(dst_rank, k);
    S.make_runnable(S.cur);
    S.yield();
  }
  void warp_op(int op) const {
    Thread* t = S.cur;
    t->op = op;
    ++t->op_seq;
    t->state = WARP_OP;
    const int warp = t->tid / 32, slot = t->cta * (S.NT / 32) + warp;
    if (++S.warp_arrived[slot] == 32) {
      S.warp_arrived[slot] = 0;
      S.run_warp_op(t->cta, warp);
      if (!S.error.empty()) S.fail(S.error);
    }
    S.yield();
  }
  void ldsm_x2(const u16* row, u32& b0, u32& b1) const {
    // lanes 16-31 supply no address in .x2: their value is not read
    const int lane = S.cur->tid & 31;
    S.cur->op_offset = lane < 16 ? S.offset_of(row, 16) : 0;
    warp_op(OP_LDSM_X2);
    b0 = S.cur->res[0];
    b1 = S.cur->res[1];
  }
  V4 lds128(const V4* p) const {
    S.offset_of(p, 16);
    if (((const unsigned char*)p - S.base(S.cur->cta)) % 16 != 0) S.fail("16-byte shared load not aligned");
    return *p;
  }
  template <int DT>
  void mma(float* d, const V4& a, u32 b0, u32 b1) const {
    Thread* t = S.cur;
    t->a[0] = a.x;
    t->a[1] = a.y;
    t->a[2] = a.z;
    t->a[3] = a.w;
    t->b[0] = b0;
    t->b[1] = b1;
    for (int i = 0; i < 4; ++i) t->d[i] = d[i];
    warp_op(DT == fr::DT_F16 ? OP_MMA_F16 : OP_MMA_BF16);
    for (int i = 0; i < 4; ++i) d[i] = t->d[i];
  }
};

template <class CF>
struct Sim : SimBase {
  const fr::Params* params = nullptr;
  static void entry() {
    SimBase* s = current_sim();
    SimHW hw(*s);
    fr::run<CF>(*static_cast<Sim<CF>*>(s)->params, hw);
    s->cur->state = DONE;
    swapcontext(&s->cur->ctx, &s->sched);
  }
};

// Run every cluster of the grid (one after another: clusters never talk to each other).
// Returns 0, or 1 with the first error in `err`.
template <class CF>
int run(const fr::Params& p, int n_clusters, unsigned seed, char* err, int errlen, long* switches) {
  Sim<CF> sim;
  sim.params = &p;
  sim.C = CF::C;
  sim.NT = CF::NTHREADS;
  sim.smem_bytes = CF::SMEM;
  sim.off_bar = CF::OFF_BAR;
  sim.off_v = CF::OFF_V;
  sim.v_bytes = CF::V_BYTES;
  sim.rng.seed(seed);
  current_sim() = &sim;
  long total = 0;
  std::vector<char> stacks;
  for (int cl = 0; cl < n_clusters && sim.error.empty(); ++cl) {
    sim.cluster_index = cl;
    sim.smem.assign(CF::C, std::vector<unsigned char>(CF::SMEM + 2 * GUARD, 0xFF));
    for (auto& m : sim.smem) {
      std::memset(m.data(), 0xA5, GUARD);
      std::memset(m.data() + GUARD + CF::SMEM, 0xA5, GUARD);
    }
    sim.bars.assign(2 * CF::C, Bar());
    sim.warp_arrived.assign(CF::C * CF::NW, 0);
    sim.cta_arrived.assign(CF::C, 0);
    sim.cluster_arrived = 0;
    if (stacks.empty()) stacks.resize((size_t)CF::C * CF::NTHREADS * STACK_BYTES);
    sim.threads.clear();
    sim.threads.resize((size_t)CF::C * CF::NTHREADS);
    sim.runnable.clear();
    for (int cta = 0; cta < CF::C; ++cta)
      for (int tid = 0; tid < CF::NTHREADS; ++tid) {
        Thread& t = sim.threads[(size_t)cta * CF::NTHREADS + tid];
        t.cta = cta;
        t.tid = tid;
        t.stack = stacks.data() + ((size_t)cta * CF::NTHREADS + tid) * STACK_BYTES;
        std::memset(t.stack, 0x5A, STACK_CANARY);
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = t.stack;
        t.ctx.uc_stack.ss_size = STACK_BYTES;
        t.ctx.uc_link = &sim.sched;
        makecontext(&t.ctx, (void (*)()) & Sim<CF>::entry, 0);
        sim.make_runnable(&t);
      }
    while (sim.error.empty()) {
      if (sim.runnable.empty()) {
        size_t done = 0;
        for (Thread& t : sim.threads) done += t.state == DONE;
        if (done == sim.threads.size()) break;
        char buf[200];
        int waiting[6] = {0, 0, 0, 0, 0, 0};
        for (Thread& t : sim.threads) ++waiting[t.state];
        std::snprintf(buf, sizeof buf,
                      "deadlock in cluster %d: %d threads at a warp operation, %d at __syncthreads, %d at the cluster "
                      "barrier, %d on an mbarrier, %d done",
                      cl, waiting[WARP_OP], waiting[CTA_SYNC], waiting[CLUSTER_SYNC], waiting[MBAR_WAIT], waiting[DONE]);
        sim.error = buf;
        break;
      }
      std::uniform_int_distribution<size_t> pick(0, sim.runnable.size() - 1);
      const size_t i = pick(sim.rng);
      Thread* t = sim.runnable[i];
      sim.runnable[i] = sim.runnable.back();
      sim.runnable.pop_back();
      t->queued = false;
      sim.cur = t;
      ++total;
      swapcontext(&sim.sched, &t->ctx);
      if (t->state == RUNNABLE) sim.make_runnable(t);
    }
    for (Thread& t : sim.threads)
      for (size_t g = 0; g < STACK_CANARY && sim.error.empty(); ++g)
        if ((unsigned char)t.stack[g] != 0x5A) sim.error = "a simulated thread's stack overflowed";
    for (int cta = 0; cta < CF::C && sim.error.empty(); ++cta)
      for (int g = 0; g < GUARD; ++g)
        if (sim.smem[cta][g] != 0xA5 || sim.smem[cta][GUARD + CF::SMEM + g] != 0xA5) {
          sim.error = "a shared-memory guard byte was overwritten";
          break;
        }
  }
  current_sim() = nullptr;
  if (switches) *switches = total;
  if (!sim.error.empty()) {
    std::snprintf(err, (size_t)errlen, "%s", sim.error.c_str());
    return 1;
  }
  return 0;
}

}  // namespace frsim

// The Params layout (size, then the offset of every field in declaration order), for the launcher's
// ctypes mirror of the struct.
#define FR_PARAMS_FIELDS(X)                                                                                    \
  X(x) X(s_x_t) X(s_x_b) X(w) X(bias) X(h0) X(s_h0_b) X(c0) X(s_c0_b) X(lengths) X(d_hn) X(s_dhn_b) X(d_cn)      \
      X(s_dcn_b) X(d_cs) X(s_dcs_t) X(s_dcs_b) X(out_in) X(s_oi_t) X(s_oi_b) X(saved_in) X(out) X(h_n) X(c_n)    \
          X(saved) X(cs) X(d_gx) X(d_ghi) X(d_h0) X(d_c0) X(status) X(T) X(B) X(reverse) X(pad_)
#define FR_PARAMS_OFFSET(f) out[n++] = (long)offsetof(fr::Params, f);
#define FR_SIM_LAYOUT()                                                \
  extern "C" int frsim_params_layout(long* out) {                      \
    int n = 0;                                                         \
    out[n++] = (long)sizeof(fr::Params);                               \
    FR_PARAMS_FIELDS(FR_PARAMS_OFFSET)                                 \
    return n;                                                          \
  }                                                                    \
  extern "C" void frsim_inject_timeout(int cta, long wait) {           \
    frsim::injected_timeout().cta = cta;                               \
    frsim::injected_timeout().wait = wait;                             \
  }

// One exported configuration: frsim_run_<id>(params, clusters, seed, err, errlen, switches) and
// frsim_smem_<id>() (the configuration's shared-memory bytes).
#define FR_SIM_CONFIG(id, ...)                                                                               \
  typedef fr::Cfg<__VA_ARGS__> FrSimCfg##id;                                                                 \
  extern "C" int frsim_run_##id(const fr::Params* p, int n_clusters, unsigned seed, char* err, int errlen,     \
                                long* switches) {                                                            \
    return frsim::run<FrSimCfg##id>(*p, n_clusters, seed, err, errlen, switches);                            \
  }                                                                                                          \
  extern "C" int frsim_smem_##id() { return FrSimCfg##id::SMEM; }
