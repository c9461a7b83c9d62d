"""What the reference's attention kernel would cost a pass of the default CUDA engine.

In bf16 the attention kernel decides the tokens: the reference runs every pass after the first
on SDPA's math kernel, at the model's head width, while parcli's CUDA engine pads heads to a
multiple of 8 (GPT-3B's 100 to 104) so that the fused kernels take them. Whether the default
should take the math kernel, and so the reference's tokens, turns on what it costs per pass.
This times both, at a model's shapes and the widths and batches PAR's passes have, over a
cache as full as a pass's (every slot of the plan), masked as the plan's last pass is:
  fused   the kernels parcli's engine gets (CUDA: memory-efficient or cuDNN, heads padded; the
          CPU: its flash kernel)
  math    the reference's: SDPA's math kernel, heads as the model has them
Milliseconds per pass (one call per layer; the best of the rounds, each the mean of CALLS calls).
Usage: python measure/attention_kernels.py [ARCH] [ROUNDS] [SEQUENCES]  (defaults: GPT-3B 5 2,64)
"""

import sys

import torch
import torch.nn.functional as F
from device_timing import best_ms
from torch.nn.attention import SDPBackend, sdpa_kernel

from parcli.config import GPTConfig
from parcli.model import cache_head_dim
from parcli.plan import Plan

REGIONS = (1, 4, 16)
SEQUENCES = "2,64"  # batch 1 and 32 under guidance
CALLS = 20
FUSED = {
    "cuda": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION],
    "cpu": [SDPBackend.FLASH_ATTENTION],
}


def attention(sequences, heads, plan, head_dim, padded, device):
    """A call of SDPA as the plan's last pass makes it: its queries, the whole cache, its rows
    of the mask, the scale of the model's head width."""
    torch.manual_seed(0)
    width, slots = plan.passes[-1].width, plan.num_slots
    shape = (sequences, heads, slots, padded)
    q = torch.zeros(sequences, heads, width, padded, device=device, dtype=torch.bfloat16)
    k = torch.zeros(shape, device=device, dtype=torch.bfloat16)
    v = torch.zeros(shape, device=device, dtype=torch.bfloat16)
    for t in (q, k, v):
        t[..., :head_dim] = torch.randn(*t.shape[:-1], head_dim, device=device)
    mask = torch.from_numpy(plan.attention_mask()[slots - width :]).to(device)
    scale = head_dim**-0.5

    def attend():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    return attend


def main() -> None:
    arch = sys.argv[1] if len(sys.argv) > 1 else "GPT-3B"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sequence_counts = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else SEQUENCES).split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    cfg = GPTConfig.preset(arch, grid=(24, 24), regions=1)
    padded = cache_head_dim(cfg.head_dim, device)
    print(
        f"{name} · torch {torch.__version__} · {arch}: {cfg.n_layer} layers, {cfg.n_head} heads "
        f"of {cfg.head_dim} (cache {padded}), bf16; ms per pass"
    )
    for regions in REGIONS:
        plan = Plan((24, 24), regions)
        for sequences in sequence_counts:
            cells = []
            for label, backends, head_width in (
                ("fused", FUSED[device.type], padded),
                ("math", [SDPBackend.MATH], cfg.head_dim),
            ):
                attend = attention(sequences, cfg.n_head, plan, cfg.head_dim, head_width, device)
                try:
                    with sdpa_kernel(backends):
                        ms = best_ms(attend, device, rounds, CALLS) * cfg.n_layer
                except RuntimeError as error:  # no such kernel for these inputs: say so, go on
                    cells.append(f"{label} failed ({error})"[:100])
                    continue
                cells.append(f"{label} {ms:.3f}")
            width = plan.passes[-1].width
            print(
                f"n = {regions:2d}, {sequences:2d} sequences, {width:2d} queries a pass: "
                + " · ".join(cells),
                flush=True,
            )


if __name__ == "__main__":
    main()
