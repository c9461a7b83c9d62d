"""The VQ decoder on a CUDA GPU: channels-last against contiguous, TF32 convolutions on and off.

GroupNorm hands back channels-first output in recent PyTorch, so channels-last may cost two
layout copies per block; TF32 is cuDNN's default for convolutions but rounds more. This times
LlamaGen's VQ-16 (random weights) decoding 384x384 images in the four combinations, with
`cudnn.benchmark` on, by CUDA events (best of the repeats), and says how far each one's pixels
are from the CPU's float32 decode of the same codes (the goal: within one level, at most 0.1 %
of pixels off by one). Usage: python measure/vq_cuda_layouts.py [BATCH]
"""

import sys

import numpy as np
import torch
from device_timing import best_ms

from parcli.vq import VQConfig, VQModel, to_pixels


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    torch.manual_seed(0)
    vq = VQModel(VQConfig()).eval()
    codes = torch.randint(0, 16384, (batch, 24, 24))
    with torch.inference_mode():
        cpu = to_pixels(vq.decode_codes(codes[:1])).numpy().astype(int)
    print(f"{torch.cuda.get_device_name(0)} · torch {torch.__version__} · batch {batch}")
    torch.backends.cudnn.benchmark = True
    gpu = torch.device("cuda")
    gpu_codes = codes.to(gpu)
    for layout in (torch.contiguous_format, torch.channels_last):
        model = vq.cuda().to(memory_format=layout)
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.inference_mode():
                took = best_ms(lambda model=model: model.decode_codes(gpu_codes), gpu, 5)
                pixels = to_pixels(model.decode_codes(gpu_codes[:1])).cpu().numpy().astype(int)
            off = np.abs(pixels - cpu)
            print(
                f"{str(layout).removeprefix('torch.'):18s} tf32 {'on ' if tf32 else 'off'}: "
                f"{took / batch:7.2f} ms/image · vs CPU: max {off.max()} levels, "
                f"{100 * (off > 0).mean():.3f} % of pixels differ"
            )


if __name__ == "__main__":
    main()
