"""Benchmark: presso's Triton low-bit GEMM against torch's fp16 matmul (cuBLAS) on a CUDA GPU.

For every ``N x K`` weight (4096x4096, 11008x4096, 4096x11008: a Llama-7B projection, its MLP
up and down) and ``M`` input rows (1 and 16: decode; 128: prefill), times ``y = x @ W^T``:

* torch: ``W`` fp16, ``torch.nn.functional.linear`` (cuBLAS) — the baseline;
* triton: ``W`` packed at 4 bits (and 2, 3, 8), group 128, ``presso.kernels`` ``wq_matmul``,
  autotuned for the shape before timing.

Times are medians of ``triton.testing.do_bench`` (CUDA events, L2 flushed before every call,
so weights come from HBM as in a real forward). Both kernels are timed in the same run.

    speed-up = torch_fp16_us / triton_us
    GB/s     = (weight bytes + x bytes + y bytes) / time
               weight bytes: fp16 2 N K; packed N K bits / 8 + 2 * 2 N (K / group) (scales, zeros)
               x bytes 2 M K, y bytes 2 M N

At M = 1 the GEMM is bound by memory bandwidth, so a 4-bit weight (about a quarter of the
fp16 bytes) bounds the speed-up near 4x (MARLIN reaches about 3.9x up to M = 16).

    .venv/bin/python experiments/benchmarks/kernels_gpu.py [--bits 2 3 4 8] [--group 128]
        [--rows 1 16 128] [--json results.json]

Needs a CUDA GPU and triton; without a GPU it says so and exits (status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (N = out_features, K = in_features)


def weight_bytes(n: int, k: int, bits: int, group: int) -> int:
    """Bytes a GEMM streams for its weight: fp16 for bits 16, else packed codes + fp16 grids."""
    if bits >= 16:
        return 2 * n * k
    return n * k * bits // 8 + 2 * 2 * n * (k // group)


def gbps(n: int, k: int, m: int, bits: int, group: int, ms: float) -> float:
    total = weight_bytes(n, k, bits, group) + 2 * m * k + 2 * m * n
    return total / (ms * 1e-3) / 1e9


def bench(fn, warmup: int, rep: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events, L2 cleared before each call)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def rows_for_shape(n: int, k: int, m: int, args: argparse.Namespace) -> list[dict]:
    from presso.compress import QuantSpec, quantize_rtn
    from presso.kernels._packing import pack, reference_matmul
    from presso.kernels._triton_gemm import chosen_config, wq_matmul

    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda") * 0.02
    w16 = w.half()
    dense_ms = bench(lambda: torch.nn.functional.linear(x, w16), args.warmup, args.rep)
    base = {"N": n, "K": k, "M": m}
    rows = [
        {
            **base,
            "kernel": "torch fp16",
            "bits": 16,
            "us": dense_ms * 1e3,
            "speedup": 1.0,
            "GB/s": gbps(n, k, m, 16, args.group, dense_ms),
            "tile": "cuBLAS",
            "rel_err": 0.0,
        }
    ]
    for bits in args.bits:
        packed = pack(quantize_rtn(w, QuantSpec(bits=bits, group_size=args.group)))
        y = wq_matmul(x, packed)  # autotunes for this shape before timing
        ref = reference_matmul(x, packed)
        err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
        tile = chosen_config()
        ms = bench(lambda p=packed: wq_matmul(x, p), args.warmup, args.rep)
        rows.append(
            {
                **base,
                "kernel": "triton wq",
                "bits": bits,
                "us": ms * 1e3,
                "speedup": dense_ms / ms,
                "GB/s": gbps(n, k, m, bits, args.group, ms),
                "tile": tile,
                "rel_err": err,
            }
        )
        del packed
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'N x K':>12} {'M':>4} {'kernel':>11} {'bits':>4} {'median us':>10} {'vs fp16':>8} {'GB/s':>7} {'rel err':>8}  tile"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['N']}x{r['K']}"
        print(
            f"{shape:>12} {r['M']:>4} {r['kernel']:>11} {r['bits']:>4} {r['us']:>10.2f} "
            f"{r['speedup']:>7.2f}x {r['GB/s']:>7.0f} {r['rel_err']:>8.1e}  {r['tile']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2, 3, 8])
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench measuring time, ms")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "kernels_gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
            "this benchmark times GPU kernels and needs one. Nothing was measured.",
            file=sys.stderr,
        )
        return 1
    try:
        import triton  # noqa: F401
    except ImportError:
        print("kernels_gpu: needs triton: pip install 'presso[triton]'", file=sys.stderr)
        return 1
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  group {args.group}")
    rows: list[dict] = []
    for n, k in SHAPES:
        for m in args.rows:
            rows += rows_for_shape(n, k, m, args)
            print(f"  measured {n}x{k} M={m}", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
