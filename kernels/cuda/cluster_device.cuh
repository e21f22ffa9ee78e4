// fastrnn cluster tier: the hardware operations of cluster_kernel.cuh as inline PTX (sm_90a).
#pragma once
#include "cluster_common.cuh"

namespace fr {

extern __shared__ __align__(128) char fr_dynamic_smem[];

FR_FN u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

// Give up an exchange after this long (ns of %globaltimer): a kernel never hangs; its outputs
// are NaN from then on, Params.status says so, and the CTA waits no more (a launch that fails
// ends within one timeout, not one per step).
constexpr u64 EXCHANGE_TIMEOUT_NS = 2000000000ull;

struct DevHW {
  FR_FN int tid() const { return (int)threadIdx.x; }
  FR_FN int rank() const {
    u32 r;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return (int)r;
  }
  FR_FN int cluster() const {
    u32 r;
    asm("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return (int)r;
  }
  FR_FN char* smem() const { return fr_dynamic_smem; }
  FR_FN void sync() const { __syncthreads(); }
  FR_FN void cluster_sync() const {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
  }
  FR_FN void mbar_init(u64* bar, u32 count) const {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
  }
  FR_FN void fence_mbar_init() const { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
  FR_FN void mbar_expect(u64* bar, u32 bytes) const {
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
  }
  FR_FN bool mbar_wait(u64* bar, u32 parity) const {
    const u32 a = smem_addr(bar);
    u64 start = 0;
    for (;;) {
      u32 done;
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, "
          "p; }"
          : "=r"(done)
          : "r"(a), "r"(parity)
          : "memory");
      if (done) return true;
      u64 now;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
      if (start == 0) {
        start = now;
      } else if (now - start > EXCHANGE_TIMEOUT_NS) {
        return false;
      }
    }
  }
  FR_FN void st_async(int dst_rank, const void* local, const V4& v, const u64* local_bar) const {
    u32 ra, rb;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(smem_addr(local)), "r"(dst_rank));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rb) : "r"(smem_addr(local_bar)), "r"(dst_rank));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(ra),
                 "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(rb)
                 : "memory");
  }
  FR_FN void ldsm_x2(const u16* row, u32& b0, u32& b1) const {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(b0), "=r"(b1)
                 : "r"(smem_addr(row))
                 : "memory");
  }
  FR_FN V4 lds128(const V4* p) const { return *p; }
  template <int DT>
  FR_FN void mma(float* d, const V4& a, u32 b0, u32 b1) const {
    if (DT == DT_F16) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
    }
  }
};

}  // namespace fr
