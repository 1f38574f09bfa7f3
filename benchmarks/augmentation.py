"""Benchmark: batched on-device augmentation against torchvision's per-image PIL
transforms in a DataLoader with num_workers=0, images per second, on CIFAR-shaped uint8
images. Both produce normalised float batches of 128.

    python benchmarks/augmentation.py [--images 4096] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from optlab.plugins.registry import default_registry

NORM = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PIL_PIPELINES = {
    "flip_crop": [transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4)],
    "sgdm_pipeline": [  # seed 003's SGDM transforms
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(15),
        transforms.RandomCrop(32, padding=4),
        transforms.RandomAffine(degrees=0, translate=(0.1, 0.1)),
        transforms.RandomPerspective(distortion_scale=0.2, p=0.5),
        transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.2),
    ],
}


class Images(Dataset):
    def __init__(self, images, tf):
        self.images, self.tf = images, tf

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.images[i]))


def pil_rate(images, name) -> float:
    tf = transforms.Compose([*PIL_PIPELINES[name], transforms.ToTensor(), NORM])
    loader = DataLoader(Images(images, tf), batch_size=128, num_workers=0, shuffle=True)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return len(images) / (time.perf_counter() - t0)


def batched_rate(images, name, device) -> float:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    x = (x - 0.5) / 0.5  # the dataset is normalised once, when it is loaded
    aug = default_registry().create(
        "augmentation", name, {}, input_shape=(3, 32, 32), mean=[0.5] * 3, std=[0.5] * 3
    )
    gen = torch.Generator(device=device).manual_seed(0)
    aug(x[:128], gen)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(0, len(x), 128):
        aug(x[torch.randperm(len(x), device=device, generator=gen)[:128]], gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    images = np.random.default_rng(0).integers(0, 256, (a.images, 32, 32, 3), dtype=np.uint8)
    print(
        f"{a.images} CIFAR-shaped images, batches of 128, {device.type}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "| pipeline | PIL DataLoader, num_workers=0 (img/s) | optlab batched (img/s) | speed-up |"
    )
    print("|---|---|---|---|")
    for name in PIL_PIPELINES:
        pil, ours = pil_rate(images, name), batched_rate(images, name, device)
        print(f"| {name} | {pil:.0f} | {ours:.0f} | {ours / pil:.1f}x |")


if __name__ == "__main__":
    main()
