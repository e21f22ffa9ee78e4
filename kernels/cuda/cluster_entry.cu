// fastrnn cluster tier: one kernel per cubin, its configuration given as -D macros by the
// launcher (fastrnn/kernels/cluster.py), e.g.
//
//   nvcc -cubin -arch=sm_90a -O3 -DFR_CELL=2 -DFR_DT=0 -DFR_DIR=0 -DFR_H=256 -DFR_C=16 -DFR_BT=16
//        -DFR_NW=8 -DFR_WM=4 -DFR_KREG=8 -DFR_AS=2 cluster_entry.cu
//
// The cluster size is given at launch (cuLaunchKernelEx, CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION):
// grid = (C * tiles, 1, 1), cluster = (C, 1, 1), NW * 32 threads, Cfg::SMEM bytes of dynamic
// shared memory.
#include "cluster_device.cuh"
#include "cluster_kernel.cuh"

typedef fr::Cfg<FR_CELL, FR_DT, FR_DIR, FR_H, FR_C, FR_BT, FR_NW, FR_WM, FR_KREG, FR_AS> FrCfg;

extern "C" __global__ void __launch_bounds__(FrCfg::NTHREADS, 1) fastrnn_cluster(const fr::Params p) {
  fr::DevHW hw;
  fr::run<FrCfg>(p, hw);
}
