#!/usr/bin/python3
"""PyTorch CPU side of nvlm's benchmarks (Debian python3-torch): the GEMM and GEMV shapes of
`nvlm bench` in float32 (and bfloat16 where the build supports it), at 1 and N threads, so
the two can be printed side by side (bench/compare.sh). Rates use process CPU time / threads
when --cpu-time is given, like `nvlm bench --cpu-time`, for busy shared machines."""
import argparse, os, time
import torch

def clock(cpu, nt):
    return time.process_time() / nt if cpu else time.perf_counter()

def bench(fn, reps, cpu, nt):
    fn()
    best = 1e30
    for _ in range(reps):
        t0 = clock(cpu, nt); fn(); t = clock(cpu, nt) - t0
        best = min(best, t)
    return best

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    M, N, K = (128 if a.quick else 512), 1024, 1024
    GN, GK = (4096 if a.quick else 16384), 4096
    print(f"torch {torch.__version__}, BLAS: {torch.__config__.show().count('BLAS')} mentions")
    for nt in sorted({1, a.threads}):
        torch.set_num_threads(nt)
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(M, K).to(dt); w = torch.randn(N, K).to(dt) * 0.05
            t = bench(lambda: torch.nn.functional.linear(x, w), 3, a.cpu_time, nt)
            print(f"torch GEMM {M}x{N}x{K} {str(dt):15s} {nt} thread(s): {2*M*N*K/t/1e9:8.1f} GFLOP/s")
            xv = torch.randn(1, GK).to(dt); wv = torch.randn(GN, GK).to(dt)
            t = bench(lambda: torch.nn.functional.linear(xv, wv), 5, a.cpu_time, nt)
            print(f"torch GEMV {GN}x{GK} {str(dt):15s} {nt} thread(s): {GN*GK*wv.element_size()/t/1e9:8.1f} GB/s")

if __name__ == "__main__":
    main()
