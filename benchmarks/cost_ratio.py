"""Benchmark: cost of one training step / one inference forward, per model, on this machine.

Every selection speedup is bounded by this ratio (skipping a backward saves at most
(r - 1) / r of a step), so measure it for the models you use rather than assuming a GPU's ~3x.

    python benchmarks/cost_ratio.py [--batch 128] [--reps 30] [--models cnn proxy_cnn mlp resnet_cifar]
    python benchmarks/cost_ratio.py --models fasttext textcnn transformer --text-store pipelines/text-wordnet/data/store

Text models run on dummy batches at the padded length a text store's training batches have
(``--group-by-length`` as in the pipeline's params; without a store: 16,000 words, batches of
18 tokens, WordNet's with grouping).

Train step = forward + per-example loss + backward + SGD step, model in train mode.
Forward    = inference forward (eval mode, torch.inference_mode) plus per-example loss, as a
             selection pass runs it; in fp32 and under bf16 autocast.
Each model's two measurements are interleaved rep by rep; the ratio of medians is printed.
"""

import argparse
import json
import platform

import torch

from selectkit.config import ModelConfig
from selectkit.costs import measure_costs

SHAPES = {"cnn": (1, 28, 28), "proxy_cnn": (1, 28, 28), "mlp": (1, 28, 28), "resnet_cifar": (3, 32, 32)}
TEXT_MODELS = ("fasttext", "textcnn", "transformer")
TEXT_SPEC = {"vocab_size": 16000, "max_length": 64, "batch_length": 18}


def measure(name: str, batch: int, reps: int, channels_last: bool, device: torch.device, text_spec=None,
            num_classes: int = 10):
    task, spec = (("text_classification", text_spec or TEXT_SPEC) if name in TEXT_MODELS
                  else ("image_classification", {"shape": list(SHAPES[name])}))
    r = measure_costs(ModelConfig(name), task, spec, num_classes, batch, batch, reps=reps,
                      channels_last=channels_last, device=str(device))
    b = measure_costs(ModelConfig(name), task, spec, num_classes, batch, batch, reps=reps,
                      channels_last=channels_last, device=str(device), selection_precision="bf16")
    return {"model": name, "params": r["params"], "train_step_ms": 1e3 * r["train_step_s"],
            "forward_ms": 1e3 * r["forward_s"], "ratio": r["ratio"], "forward_bf16_ms": 1e3 * b["forward_s"],
            "ratio_bf16": b["ratio"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=list(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--text-store", default=None, help="text models: take vocabulary, lengths and classes from this store")
    ap.add_argument("--group-by-length", type=int, default=50, help="text: input.group_by_length of the runs")
    args = ap.parse_args()
    device = torch.device(args.device)
    text_spec, text_classes = None, 10
    if args.text_store:
        from selectkit.store import Store
        from selectkit.tasks import task_for

        t = task_for(Store(args.text_store), batch_size=args.batch, group_by_length=args.group_by_length)
        text_spec, text_classes = t.spec_dict(), t.num_classes
        print(f"# text spec from {args.text_store}: {text_spec}, {text_classes} classes")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}")
    print("| model | params | layout | train step (ms) | forward (ms) | train step / forward | "
          "bf16 forward (ms) | train step / bf16 forward |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        for cl in ((True,) if name in TEXT_MODELS else (True, False)):
            reps = max(5, args.reps // 5) if name == "resnet_cifar" and device.type == "cpu" else args.reps
            r = measure(name, args.batch, reps, cl, device, text_spec, text_classes if name in TEXT_MODELS else 10)
            r["layout"] = ("tokens" if name in TEXT_MODELS else "channels_last" if cl else "NCHW")
            rows.append(r)
            print(f"| {name} | {r['params']:,} | {r['layout']} | {r['train_step_ms']:.2f} | "
                  f"{r['forward_ms']:.2f} | {r['ratio']:.2f} | {r['forward_bf16_ms']:.2f} | "
                  f"{r['ratio_bf16']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
