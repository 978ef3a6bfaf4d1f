"""EDIP pretraining in full precision against mixed precision (autocast), side by side on one device.

The same U-Net, pairs, seed and schedule are trained with ``amp="off"`` (float32) and ``amp="on"``
(bfloat16 autocast; float16 with loss scaling on GPUs without bfloat16). Printed per setting: seconds
per epoch, the speed-up over float32, and the validation PSNR after the last epoch (FBP input PSNR
for reference). Pairs are generated once, outside the timings.

    python benchmarks/pretrain_precision.py --size 128 --count 512 --epochs 3
    python benchmarks/pretrain_precision.py --device cuda --count 1024
"""

from __future__ import annotations

import argparse

import torch

from invprior.config import parse_config
from invprior.core.noise import GaussianNoise
from invprior.data.synthetic import SyntheticPairs
from invprior.experiment import build_problem
from invprior.methods.pretrain import autocast_dtype, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--angles", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.025)
    parser.add_argument("--count", type=int, default=512, help="training pairs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    raw = {"problem": {"operator": "ct_parallel", "operator_params": {"num_angles": args.angles}, "image": "ellipses",
                       "size": args.size, "noise": {"relative": args.noise}}, "method": {"name": "fbp"}}
    operator = build_problem(parse_config(raw).problem).operator
    noise = GaussianNoise(relative=args.noise)
    training = SyntheticPairs(operator, args.count, noise, seed=0, fine_factor=3).cache_in_memory()
    validation = SyntheticPairs(operator, 64, noise, seed=1, fine_factor=3).cache_in_memory()
    device = torch.device(args.device)
    print(f"{args.size}x{args.size}, {args.count} pairs, {args.epochs} epochs, batch {args.batch_size}, "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads)")
    print("| amp | compute dtype | s/epoch | speed-up | val PSNR | FBP PSNR |\n|---|---|---|---|---|---|")
    baseline = None
    for amp in ("off", "on"):
        model = pretrain(training, validation, "unet", {"preset": "small"}, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, amp=amp, device=device, progress=False)
        seconds = sum(model.history["seconds"]) / args.epochs
        baseline = baseline or seconds
        dtype = autocast_dtype(device, amp)
        print(f"| {amp} | {str(dtype or torch.float32).replace('torch.', '')} | {seconds:.1f} "
              f"| {baseline / seconds:.2f}x "
              f"| {model.history['val_psnr'][-1]:.2f} | {model.history['val_input_psnr'][-1]:.2f} |")


if __name__ == "__main__":
    main()
