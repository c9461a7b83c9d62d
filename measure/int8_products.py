"""The int8 product on the device at hand, against bf16, at the row counts PAR's passes have.

`--quantize int8` multiplies by `torch._weight_int8pack_mm` on CUDA (eager, and as one opaque
kernel inside a compiled step). gpt-fast instead writes the product as a bf16 product of the
weight converted on the fly, which Inductor can fuse into one kernel that reads int8. This times
the three for a model's feed-forward weights (the largest), streaming a pool of weight copies
larger than the GPU's L2 cache, so that each product reads its weight from memory as a pass does:
  bf16       F.linear on a bf16 weight (the float memory floor's product)
  int8 op    torch._weight_int8pack_mm (what parcli runs)
  compiled   torch.compile of F.linear(x, w.to(bf16)) * scales (CUDA only; 2 and 32 rows)
Milliseconds per product (the best of the rounds) and the weight bytes read per second.
Usage: python measure/int8_products.py [ARCH] [POOL_MIB]  (defaults: GPT-3B 512)
"""

import sys

import torch
import torch.nn.functional as F
from device_timing import best_ms

from parcli.config import GPTConfig

ROWS = (2, 8, 32, 64)  # batch 1 under guidance at n = 1, 4 and 16; batch 32 at n = 1
COMPILED_ROWS = (2, 32)  # a compile per shape and row count: the GPU check has seconds for four
ROUNDS = 5


def sweep_ms(product, weights, x, device) -> float:
    """The best of ROUNDS sweeps over `weights`, in ms per product."""

    def sweep():
        for w in weights:
            product(x, w)

    return best_ms(sweep, device, ROUNDS) / len(weights)


def main() -> None:
    arch = sys.argv[1] if len(sys.argv) > 1 else "GPT-3B"
    pool_bytes = (int(sys.argv[2]) if len(sys.argv) > 2 else 512) << 20
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = GPTConfig.preset(arch, grid=(24, 24), regions=1)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"{name} · torch {torch.__version__} · {arch} feed-forward weights")
    for shape in ((cfg.ffn_hidden, cfg.dim), (cfg.dim, cfg.ffn_hidden)):
        copies = max(2, pool_bytes // (2 * shape[0] * shape[1]))
        torch.manual_seed(0)
        floats = [torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(copies)]
        scales = floats[0].float().abs().amax(1) / 127
        ints = [(w.float() / scales[:, None]).round().to(torch.int8) for w in floats]
        scales = scales.to(torch.bfloat16)

        def bf16(x, w):
            return F.linear(x, w)

        def int8_op(x, w, scales=scales):
            return torch._weight_int8pack_mm(x, w, scales)

        def widened(x, w, scales=scales):
            return F.linear(x, w.to(x.dtype)) * scales

        products = {"bf16": (bf16, floats), "int8 op": (int8_op, ints)}
        if device.type == "cuda":
            products["compiled"] = (torch.compile(widened, dynamic=False), ints)
        for rows in ROWS:
            x = torch.randn(rows, shape[1], device=device, dtype=torch.bfloat16)
            cells = []
            for label, (product, weights) in products.items():
                if label == "compiled" and rows not in COMPILED_ROWS:
                    continue
                try:
                    ms = sweep_ms(product, weights, x, device)
                except Exception as error:  # noqa: BLE001 - report the kernel, go on
                    cells.append(f"{label} failed ({type(error).__name__}: {error})"[:120])
                    continue
                gbps = weights[0].numel() * weights[0].element_size() / ms / 1e6
                cells.append(f"{label} {ms:.3f} ms ({gbps:.0f} GB/s)")
            print(f"{shape[0]}x{shape[1]}, {rows:2d} rows: " + " · ".join(cells), flush=True)
        del floats, ints


if __name__ == "__main__":
    main()
