"""Benchmark: cost of one training step / one inference forward, per model, on this machine.

Every selection speedup is bounded by this ratio (skipping a backward saves at most
(r - 1) / r of a step), so measure it for the models you use rather than assuming a GPU's ~3x.

    python benchmarks/cost_ratio.py [--batch 128] [--reps 30] [--models cnn proxy_cnn mlp resnet_cifar]

Train step = forward + per-example loss + backward + SGD step, model in train mode.
Forward    = inference forward (eval mode, torch.inference_mode), as a selection pass runs it.
Each model's two measurements are interleaved rep by rep; the ratio of medians is printed.
"""

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from selectkit.config import ModelConfig
from selectkit.models import build_model

SHAPES = {"cnn": (1, 28, 28), "proxy_cnn": (1, 28, 28), "mlp": (1, 28, 28), "resnet_cifar": (3, 32, 32)}


def measure(name: str, batch: int, reps: int, channels_last: bool, device: torch.device):
    torch.manual_seed(0)
    shape = SHAPES[name]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(ModelConfig(name), shape, 10).to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        model.train()
        loss = F.cross_entropy(model(x), y, reduction="none").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        model.eval()
        with torch.inference_mode():
            model(x)

    for _ in range(3):  # warm-up: allocator, kernels
        train_step()
        forward()
    sync()
    t_train, t_fwd = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        train_step()
        sync()
        t1 = time.perf_counter()
        forward()
        sync()
        t2 = time.perf_counter()
        t_train.append(t1 - t0)
        t_fwd.append(t2 - t1)
    tr, fw = statistics.median(t_train), statistics.median(t_fwd)
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "train_step_ms": 1e3 * tr,
            "forward_ms": 1e3 * fw, "ratio": tr / fw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=list(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}")
    print("| model | params | layout | train step (ms) | forward (ms) | train step / forward |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        for cl in (True, False):
            reps = max(5, args.reps // 5) if name == "resnet_cifar" and device.type == "cpu" else args.reps
            r = measure(name, args.batch, reps, cl, device)
            r["layout"] = "channels_last" if cl else "NCHW"
            rows.append(r)
            print(f"| {name} | {r['params']:,} | {r['layout']} | {r['train_step_ms']:.2f} | "
                  f"{r['forward_ms']:.2f} | {r['ratio']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
