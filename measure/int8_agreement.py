"""How often int8 weights draw float32's greedy tokens, on random weights of a published
architecture.

Two figures per region count: free-running (both pipelines generate greedily, and every token
after the first that differs follows from it) and teacher-forced (both score the same random
token sequence in one pass, so each cell's arg-max is compared on the same prefix).

Beside int8, teacher-forced figures for other roundings of the same weights, to show how much
agreement random weights allow: the int8 weights alone (float32 inputs and products), int8
with a scale per 128 or per 32 inputs instead of per row, and the whole model in bf16
(free-running too).
Usage: python measure/int8_agreement.py [ARCH] [SIDE] [IMAGES]  (defaults: GPT-B 8 8)
"""

import copy
import sys

import torch

from parcli.config import GPTConfig
from parcli.engine.quantize import choose_products, quantize_int8
from parcli.model import Transformer, rotary_rows
from parcli.options import RunOptions
from parcli.pipeline import Pipeline
from parcli.plan import Plan
from parcli.sampling import SamplingConfig
from parcli.slots import embed_slots
from parcli.vq import VQConfig, VQModel


def teacher_forced_argmax(model, plan, labels, tokens) -> torch.Tensor:
    hidden = embed_slots(model, plan, labels, tokens, 0, plan.num_slots)
    rope = rotary_rows(plan.grid, plan.slot_cell, model.cfg.head_dim)
    mask = torch.from_numpy(plan.attention_mask())
    return model(hidden, rope, mask=mask).argmax(-1)


def rounded_weights(model: Transformer, group: int | None) -> Transformer:
    """`model` with every projection's weight rounded to int8 and back, in float32: a scale per
    output row, or per `group` inputs of a row."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight.data
            blocks = weight.reshape(weight.shape[0], -1, group or weight.shape[1])
            scales = blocks.abs().amax(-1, keepdim=True) / 127
            module.weight.data = (torch.round(blocks / scales) * scales).reshape(weight.shape)
    return model


def main() -> None:
    arch = sys.argv[1] if len(sys.argv) > 1 else "GPT-B"
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    images = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    greedy = SamplingConfig(cfg_scale=1.0, top_k=1)
    with torch.device("meta"):  # tokens only: the decoder is never run
        vq = VQModel(VQConfig())
    for regions in (1, 4, 16):
        torch.manual_seed(0)
        cfg = GPTConfig.preset(arch, grid=(side, side), regions=regions)
        model = Transformer(cfg)
        model.init_weights(zero_output=False)
        model.eval()
        plan = Plan((side, side), regions)
        labels = [k * 100 % cfg.num_classes for k in range(images)]
        tokens = torch.randint(0, cfg.vocab_size, (images, plan.num_tokens))
        with torch.no_grad():
            exact = teacher_forced_argmax(model, plan, torch.tensor(labels), tokens)
            int8 = quantize_int8(copy.deepcopy(model))
            choose_products(int8)
            rounded = teacher_forced_argmax(int8, plan, torch.tensor(labels), tokens)
            others = {
                "int8 weights alone": rounded_weights(copy.deepcopy(model), None),
                "int8, a scale per 128 inputs": rounded_weights(copy.deepcopy(model), 128),
                "int8, a scale per 32 inputs": rounded_weights(copy.deepcopy(model), 32),
                "bf16 model": copy.deepcopy(model).to(torch.bfloat16),
            }
            ceilings = {
                name: (teacher_forced_argmax(other, plan, torch.tensor(labels), tokens) == exact)
                .float()
                .mean()
                .item()
                for name, other in others.items()
            }
        forced = (exact == rounded).float().mean().item()
        floats = Pipeline(copy.deepcopy(model), vq).generate(labels, greedy, 0, images)
        ints = Pipeline(copy.deepcopy(model), vq, options=RunOptions(quantize="int8")).generate(
            labels, greedy, 0, images
        )
        free = (floats == ints).float().mean().item()
        halves = Pipeline(copy.deepcopy(model).to(torch.bfloat16), vq).generate(
            labels, greedy, 0, images
        )
        free_bf16 = (floats == halves).float().mean().item()
        print(
            f"n = {regions:2d}: int8 free-running {free:.1%} (bf16 model {free_bf16:.1%}), "
            f"teacher-forced {forced:.1%}"
        )
        print(
            "        teacher-forced, other roundings: "
            + ", ".join(f"{name} {share:.1%}" for name, share in ceilings.items())
        )


if __name__ == "__main__":
    main()
