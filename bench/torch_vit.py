#!/usr/bin/python3
"""PyTorch CPU side of nvlm's ViT figure: InternViT layers of a given shape (RMSNorm, qkv,
QK-norm, attention over all tokens, proj, layer scale, GELU MLP) on one 448px tile (1025 tokens)
in float32, random weights, ms per tile at 1 and N threads. Compare with
`nvlm bench --model DIR --no-kernels` on a checkpoint of the same shape (nvlm mkmodel).
Rates from process CPU time / threads with --cpu-time, like nvlm bench."""
import argparse, os, time
import torch

def clock(cpu, nt):
    return time.process_time() / nt if cpu else time.perf_counter()

def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

def layer(x, p, heads):
    T, C = x.shape
    hd = C // heads
    q, k, v = torch.nn.functional.linear(rms(x, p["n1"]), p["qkv"]).split(C, dim=-1)
    q, k = rms(q, p["qn"]), rms(k, p["kn"])
    q, k, v = (t.view(T, heads, hd).transpose(0, 1) for t in (q, k, v))
    a = torch.softmax(q @ k.transpose(1, 2) * hd ** -0.5, dim=-1) @ v
    x = x + p["ls1"] * torch.nn.functional.linear(a.transpose(0, 1).reshape(T, C), p["proj"], p["pb"])
    h = torch.nn.functional.gelu(torch.nn.functional.linear(rms(x, p["n2"]), p["fc1"], p["b1"]))
    return x + p["ls2"] * torch.nn.functional.linear(h, p["fc2"], p["b2"])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--cpu-time", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    C, I = a.hidden, a.intermediate
    s = C ** -0.5
    ps = [{"n1": torch.ones(C), "n2": torch.ones(C), "qn": torch.ones(C), "kn": torch.ones(C),
           "qkv": torch.randn(3 * C, C) * s, "proj": torch.randn(C, C) * s, "pb": torch.zeros(C),
           "ls1": torch.full((C,), 0.5), "ls2": torch.full((C,), 0.5),
           "fc1": torch.randn(I, C) * s, "b1": torch.zeros(I), "fc2": torch.randn(C, I) * I ** -0.5,
           "b2": torch.zeros(C)} for _ in range(a.layers)]
    x0 = torch.randn(1025, C)
    print(f"torch {torch.__version__}: InternViT {a.layers} layers, width {C}, {a.heads} heads, MLP {I}, 1025 tokens")
    for nt in sorted({1, a.threads}):
        torch.set_num_threads(nt)
        with torch.no_grad():
            best = 1e30
            for _ in range(3):
                t0 = clock(a.cpu_time, nt)
                x = x0
                for p in ps:
                    x = layer(x, p, a.heads)
                best = min(best, clock(a.cpu_time, nt) - t0)
        print(f"  {nt} thread(s): {best * 1e3:.0f} ms per tile")

if __name__ == "__main__":
    main()
