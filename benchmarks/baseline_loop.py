"""Baselines written the way researchers write them today, for the benchmarks.

- ``minimal_epoch``: a hand-written minimal PyTorch training epoch (data on the device,
  index slices, loss accumulated on the device) - the bar for optlab's engine overhead.
- run as a script: one training run in a fresh Python process, data through a PIL
  DataLoader with num_workers=0, one CSV file per run - the seed projects' way of working.
"""

from __future__ import annotations

import argparse
import csv
import math
import time

import torch
import torch.nn.functional as F


def minimal_epoch(model, opt, x, y, bs, gen, base_lr, epoch, epochs, warmup):
    """One epoch; LR: linear warmup then cosine, per step, as optlab's cosine schedule."""
    n = len(x)
    steps = math.ceil(n / bs)
    order = torch.randperm(n, device=x.device, generator=gen)
    total = torch.zeros((), device=x.device)
    model.train()
    for i in range(steps):
        idx = order[i * bs : (i + 1) * bs]
        t = epoch + i / steps
        if t < warmup:
            f = min(1.0, (t + 1 / steps) / warmup)
        else:
            f = 0.5 * (1 + math.cos(math.pi * (t - warmup) / (epochs - warmup)))
        for g in opt.param_groups:
            g["lr"] = base_lr * f
        out = model(x[idx])
        loss = F.cross_entropy(out, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
    return total.item() / n


def _digits_pil_loaders(batch_size):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    class Digits(Dataset):
        def __init__(self, xs, ys):
            self.xs = (xs * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
            self.ys = ys

        def __len__(self):
            return len(self.ys)

        def __getitem__(self, i):
            return tf(Image.fromarray(self.xs[i], mode="L")), int(self.ys[i])

    return (
        DataLoader(Digits(x_tr, y_tr), batch_size=batch_size, shuffle=True, num_workers=0),
        DataLoader(Digits(x_te, y_te), batch_size=1024, num_workers=0),
    )


def script_run(args):
    from optlab.plugins.builtins._nets import build_cnn
    from optlab.plugins.builtins.models import CNNParams

    torch.manual_seed(args.seed)
    train_dl, test_dl = _digits_pil_loaders(args.batch_size)
    model = build_cnn(CNNParams(channels=[16, 32]), input_shape=(1, 8, 8), num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "test_acc", "seconds"])
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            model.train()
            for xb, yb in train_dl:
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for xb, yb in test_dl:
                    correct += (model(xb).argmax(1) == yb).sum().item()
            w.writerow(
                [epoch + 1, loss.item(), correct / len(test_dl.dataset), time.perf_counter() - t0]
            )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--csv", required=True)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    script_run(a)
