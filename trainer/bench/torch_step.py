#!/usr/bin/env python3
"""One training step of a MedicalNet-style 3D ResNet in PyTorch, timed in parts.

The PyTorch twin of `fcdtrain bench step`: same network (MedicalNet `resnet.py`: stem conv
7x7x7 stride 2 -> BN -> ReLU -> max-pool 3/2/1, layer3 dilation 2, layer4 dilation 4 in the
`medicalnet` layout; strides 2 everywhere in `strided`), global average pool + linear head,
cross-entropy, Adam lr 1e-3, random normal input. Prints the median forward / backward /
optimizer time and the peak memory.

    python3 trainer/bench/torch_step.py --arch resnet18 --size 128 --batch 2 [--device cuda]

Exits with status 1 and a message when PyTorch is not installed.
"""

import argparse
import resource
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("torch_step.py: PyTorch is not installed (pip install torch); nothing to benchmark")

DEPTHS = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}
SHORTCUT = {"resnet10": "B", "resnet18": "A", "resnet34": "A", "resnet50": "B"}


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, dilation, shortcut):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.short = make_shortcut(cin, planes, stride, shortcut)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, dilation, shortcut):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.short = make_shortcut(cin, out, stride, shortcut)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.short(x))


class PadShortcut(nn.Module):
    """Shortcut A: subsample, then append zero channels."""

    def __init__(self, extra, stride):
        super().__init__()
        self.extra, self.stride = extra, stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.extra))


def make_shortcut(cin, cout, stride, kind):
    if cin == cout and stride == 1:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cout - cin, stride)
    return nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))


def resnet(arch, layout, width):
    block = Bottleneck if arch == "resnet50" else Basic
    planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
    strides = [1, 2, 1, 1] if layout == "medicalnet" else [1, 2, 2, 2]
    dilations = [1, 1, 2, 4] if layout == "medicalnet" else [1, 1, 1, 1]
    layers = [nn.Conv3d(1, planes[0], 7, 2, 3, bias=False), nn.BatchNorm3d(planes[0]), nn.ReLU(), nn.MaxPool3d(3, 2, 1)]
    cin = planes[0]
    for p, n, s, d in zip(planes, DEPTHS[arch], strides, dilations):
        for i in range(n):
            layers.append(block(cin, p, s if i == 0 else 1, d, SHORTCUT[arch]))
            cin = p * block.expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(cin, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=sorted(DEPTHS))
    ap.add_argument("--layout", default="medicalnet", choices=["medicalnet", "strided"])
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(1)
    model = resnet(a.arch, a.layout, a.width_mult).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    labels = torch.tensor([i % 2 for i in range(a.batch)], device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = {"forward": [], "backward": [], "optimizer": []}
    for step in range(a.steps + 1):
        x = torch.randn(a.batch, 1, a.size, a.size, a.size, device=dev)
        sync()
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), labels)
        sync()
        t_fwd = time.perf_counter() - t
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t_bwd = time.perf_counter() - t
        t = time.perf_counter()
        opt.step()
        sync()
        t_opt = time.perf_counter() - t
        if step > 0:
            times["forward"].append(t_fwd)
            times["backward"].append(t_bwd)
            times["optimizer"].append(t_opt)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{a.arch} ({a.layout}, width x{a.width_mult}, {n_params} parameters), input "
        f"{a.batch}x1x{a.size}x{a.size}x{a.size}, torch {torch.__version__} on {dev}, median of {a.steps} step(s):"
    )
    total = 0.0
    for part, values in times.items():
        m = statistics.median(values)
        total += m
        print(f"  {part:<9} {m:8.3f} s")
    print(f"  step      {total:8.3f} s")
    if dev.type == "cuda":
        print(f"  peak GPU  {torch.cuda.max_memory_allocated(dev) / 2**20:8.0f} MiB")
    print(f"  peak RSS  {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")


if __name__ == "__main__":
    main()
