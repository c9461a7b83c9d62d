"""How close the VQ decoder runs to what this machine's cores do on convolutions.

Counts the decoder's convolution FLOPs for one 384x384 image (LlamaGen's VQ-16, random weights;
the count does not depend on them), times the decode in both layouts, and times one large 3x3
convolution and one large GEMM as the attainable rates. Usage: python measure/vq_conv_rate.py
"""

import time

import torch
from torch import nn

from parcli.vq import VQConfig, VQModel


def seconds(run, repeats: int) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    torch.manual_seed(0)
    vq = VQModel(VQConfig()).eval()
    flops = [0]

    def count(module, inputs, output):
        taps = module.kernel_size[0] * module.kernel_size[1]
        flops[0] += 2 * output.numel() * (module.in_channels // module.groups) * taps

    hooks = [m.register_forward_hook(count) for m in vq.decoder.modules()
             if isinstance(m, nn.Conv2d)]  # fmt: skip
    codes = torch.randint(0, 16384, (1, 24, 24))
    with torch.inference_mode():
        vq.decode_codes(codes)
    for hook in hooks:
        hook.remove()
    print(f"threads {torch.get_num_threads()} · decoder convolutions {flops[0] / 1e9:.1f} GFLOP")
    for layout in (torch.contiguous_format, torch.channels_last):
        model = vq.to(memory_format=layout)
        with torch.inference_mode():
            took = seconds(lambda model=model: model.decode_codes(codes), 2)
        print(f"decode, {layout}: {took:.2f} s, {flops[0] / 1e9 / took:.0f} GFLOP/s")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    print(f"GEMM 2048^3: {2 * 2048**3 / 1e9 / seconds(lambda: a @ b, 5):.0f} GFLOP/s")
    conv = nn.Conv2d(128, 128, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 128, 384, 384).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        took = seconds(lambda: conv(x), 3)
    rate = 2 * 384 * 384 * 128 * 128 * 9 / 1e9 / took
    print(f"conv 128->128 3x3 at 384x384, channels-last: {rate:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
