#!/usr/bin/env python3
"""klein_flops.py: FLOP and byte accounting of one FLUX.2 [klein] 4B denoise step (bf16).

Counts, per op kind, the FLOPs and the DRAM bytes of one transformer call as editd's models crate
runs it today (candle compositions, `models/src/flux2/transformer/layers.rs`) and as it would run
with the fused kernels of editd-kernels plus a flash-attention kernel. Prints a markdown report
(benches/results/klein4b-step-flops.md is its output). Usage:
    python3 scripts/klein_flops.py [--txt 512] [--img 4096] [--refs 1] > out.md
Model numbers: `Flux2TransformerConfig::klein_4b()` (D = 24 x 128 = 3072, 5 double + 20 single
blocks, mlp_ratio 3 -> F = 9216, SwiGLU, no biases, joint_attention_dim 7680, in_channels 128).
"""
import argparse

D, H, DH, F = 3072, 24, 128, 9216
N_DOUBLE, N_SINGLE = 5, 20
TXT_DIM, IN_CH = 7680, 128
BF16 = 2
# H200 SXM: ~989 TFLOP/s dense bf16 tensor core, 4.8 TB/s HBM3e
PEAK_FLOPS, PEAK_BW = 989e12, 4.8e12

# Bytes per element of activation traffic for the elementwise ops (bf16 tensors), as written
# in models/src/flux2/transformer/layers.rs (unfused) and with one fused kernel (fused).
# modulate: to_f32 (2r+4w), mean (4r), sub (4r+4w), sqr (4r+4w), mean (4r), mul rstd (4r+4w),
#   to_bf16 (4r+2w), mul (1+scale) (2r+2w), add shift (2r+2w) = 52; fused: 2r + 2w = 4.
# gated residual: mul (2r+2w), add (4r+2w) = 10; fused 6.
# rope (per q/k element): to_f32 of the transposed view (2r+4w), rope_i (4r+4w), to_bf16 (4r+2w)
#   = 20; fused 4 (reads the (B,S,H,dh) layout directly, writes (B,H,S,dh)).
# qk rms norm: candle-nn's fused kernel already, 4 (fused with rope: 0 extra).
# swiglu (per output element): silu on the strided half (2r+2w), mul (4r+2w) = 10; fused 6.
# layout copies: v transposed to (B,H,S,dh) contiguous, the attention output transposed back,
#   and in double blocks the [txt ; img] concatenation of q, k, v: 4 per element each (both
#   paths; a flash kernel reading strided q/k/v would save them).
ELEMWISE = {
    # name: (unfused bytes/elem, unfused launches, fused bytes/elem, fused launches)
    "modulate (LN + scale/shift)": (52, 9, 4, 1),
    "gated residual": (10, 2, 6, 1),
    "qk RMSNorm": (4, 1, 4, 1),
    "RoPE q,k": (20, 3, 4, 1),
    "SwiGLU": (10, 2, 6, 1),
    "layout copies (transpose, cat)": (4, 1, 4, 1),
}


def linear(n, k, m):
    """FLOPs and bytes of (n x k) @ (k x m) in bf16: weights + input + output once each."""
    return 2 * n * k * m, BF16 * (k * m + n * k + n * m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--txt", type=int, default=512)
    ap.add_argument("--img", type=int, default=4096, help="tokens of the target (1024^2 -> 4096)")
    ap.add_argument("--refs", type=int, default=1, help="reference images of --img tokens each")
    a = ap.parse_args()
    T, N = a.txt, a.img * (1 + a.refs)
    S = T + N

    flops, bytes_u, bytes_f, launches_u, launches_f = {}, {}, {}, {}, {}

    def add(kind, fl, bu, bf=None, lu=0, lf=0):
        flops[kind] = flops.get(kind, 0) + fl
        bytes_u[kind] = bytes_u.get(kind, 0) + bu
        bytes_f[kind] = bytes_f.get(kind, 0) + (bu if bf is None else bf)
        launches_u[kind] = launches_u.get(kind, 0) + lu
        launches_f[kind] = launches_f.get(kind, 0) + lf

    def mm(kind, n, k, m):
        fl, by = linear(n, k, m)
        add(kind, fl, by, lu=1, lf=1)

    def ew(kind, elems, flops_per=4, times=1):
        """`times` calls of an elementwise op over `elems` elements in total."""
        bu, lu, bf, lf = ELEMWISE[kind]
        add(kind, flops_per * elems, bu * elems, bf * elems, lu * times, lf * times)

    def attention(s):
        # QK^T and PV: 2 * (2 S^2 D); unfused traffic per score element: QK^T write (2),
        # scale (2r+2w), softmax (2r+2w), PV read (2) = 10 B; flash: only q, k, v, o.
        fl = 4 * s * s * D
        scores = H * s * s
        # the models crate materialises at most 2^28 scores at a time: groups of heads
        heads_per_chunk = max(1, min(H, (1 << 28) // (s * s)))
        chunks = -(-H // heads_per_chunk)
        add("attention (QK^T, softmax, PV)", fl + 5 * scores,
            10 * scores + 4 * s * D * BF16, 4 * s * D * BF16, lu=4 * chunks, lf=1)

    # embedders (context_embedder could be cached across steps: txt does not depend on t)
    mm("embedders + final proj", N, IN_CH, D)
    mm("embedders + final proj", T, TXT_DIM, D)
    mm("embedders + final proj", N, D, IN_CH)
    for _ in range(N_DOUBLE):
        for n in (N, T):  # image stream, text stream
            ew("modulate (LN + scale/shift)", 2 * n * D, 8, times=2)
            mm("QKV / out projections", n, D, 3 * D)
            ew("qk RMSNorm", 2 * n * D, times=2)
            ew("RoPE q,k", 2 * n * D, times=2)
            ew("layout copies (transpose, cat)", 5 * n * D, 0, times=5)  # v, o, cat q/k/v
            mm("QKV / out projections", n, D, D)
            ew("gated residual", 2 * n * D, 2, times=2)
            mm("MLP projections", n, D, 2 * F)
            ew("SwiGLU", n * F, 5)
            mm("MLP projections", n, F, D)
        attention(S)
    for _ in range(N_SINGLE):
        ew("modulate (LN + scale/shift)", S * D, 8)
        mm("QKV / out projections", S, D, 3 * D)  # fused qkv+mlp_in split for accounting
        mm("MLP projections", S, D, 2 * F)
        ew("qk RMSNorm", 2 * S * D, times=2)
        ew("RoPE q,k", 2 * S * D, times=2)
        ew("layout copies (transpose, cat)", 2 * S * D, 0, times=2)  # v, o
        attention(S)
        ew("SwiGLU", S * F, 5)
        mm("QKV / out projections", S, D, D)  # to_out split: D and F input columns
        mm("MLP projections", S, F, D)
        ew("gated residual", S * D, 2)

    tf = sum(flops.values())
    tbu, tbf = sum(bytes_u.values()), sum(bytes_f.values())
    print(f"# FLUX.2 [klein] 4B: FLOPs and bytes of one denoise step\n")
    print(f"Generated by `scripts/klein_flops.py --txt {T} --img {a.img} --refs {a.refs}`. "
          f"Sequence: {T} text + {N} image tokens ({a.img} target + {a.refs} x {a.img} "
          f"reference) = S = {S}; D = {D} ({H} heads x {DH}), F = {F}, "
          f"{N_DOUBLE} double + {N_SINGLE} single blocks, bf16, batch 1, one transformer call "
          f"(klein is guidance-distilled: no CFG pass).\n")
    print("Bytes are DRAM traffic estimates: each matmul reads its weights and input and writes "
          "its output once; elementwise ops count every candle kernel of the composition as "
          "written in `models/src/flux2/transformer/layers.rs` (unfused) versus one pass with "
          "the editd-kernels op (fused), attention counts the materialised score matrix "
          "(unfused) versus a flash kernel that only reads q, k, v and writes o. Time floors use "
          f"H200 peaks: {PEAK_FLOPS/1e12:.0f} TFLOP/s dense bf16 and {PEAK_BW/1e12:.1f} TB/s.\n")
    print("| op | GFLOP | share | GB unfused | GB fused | launches unfused / fused "
          "| floor unfused (ms) | floor fused (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    order = sorted(flops, key=lambda k: -max(flops[k] / PEAK_FLOPS, bytes_u[k] / PEAK_BW))
    for k in order:
        fu = max(flops[k] / PEAK_FLOPS, bytes_u[k] / PEAK_BW) * 1e3
        ff = max(flops[k] / PEAK_FLOPS, bytes_f[k] / PEAK_BW) * 1e3
        print(f"| {k} | {flops[k]/1e9:,.0f} | {100*flops[k]/tf:.1f}% | {bytes_u[k]/1e9:,.2f} "
              f"| {bytes_f[k]/1e9:,.2f} | {launches_u[k]} / {launches_f[k]} | {fu:.2f} | {ff:.2f} |")
    tu = sum(max(flops[k] / PEAK_FLOPS, bytes_u[k] / PEAK_BW) for k in flops) * 1e3
    tfu = sum(max(flops[k] / PEAK_FLOPS, bytes_f[k] / PEAK_BW) for k in flops) * 1e3
    print(f"| **total** | **{tf/1e12:,.1f} TFLOP** | | **{tbu/1e9:,.1f}** | **{tbf/1e9:,.1f}** "
          f"| {sum(launches_u.values())} / {sum(launches_f.values())} | **{tu:.1f}** "
          f"| **{tfu:.1f}** |")
    att = flops["attention (QK^T, softmax, PV)"]
    mmf = flops["QKV / out projections"] + flops["MLP projections"] + flops[
        "embedders + final proj"]
    print(f"\nattention share of FLOPs: {100*att/tf:.1f}%; matmul (linear) share: "
          f"{100*mmf/tf:.1f}%; elementwise: {100*(tf-att-mmf)/tf:.2f}%.")


if __name__ == "__main__":
    main()
