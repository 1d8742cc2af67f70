"""selectkit in your own PyTorch loop: scikit-learn's digits, your model, your optimizer.

Select Via Proxy picks a subset once (a proxy model's uncertainty); Selective-Backprop,
Stale-SB and the AutoAssist gate then filter that subset online, through the same nodes the
DVC stages use. Runs in seconds on a CPU:

    python examples/own_loop.py [--epochs 6]
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from selectkit import SelectiveLoader
from selectkit.methods.svp.functions import select_single, uncertainty


class Digits(torch.utils.data.Dataset):
    """A map-style dataset returning (index, input, label): the index is the example's id."""

    def __init__(self, x, y):
        self.x, self.targets = torch.as_tensor(x, dtype=torch.float32) / 16.0, torch.as_tensor(y)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i, self.x[i], self.targets[i]


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def train(loader, model, epochs, lr=0.1):
    """A plain loop: forward, hand the per-example losses back, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for batch in loader:
            losses = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
            loader.observe(batch["ids"], losses)  # the one line selection needs from your loop
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
    loader.close()
    return model


@torch.no_grad()
def error(model, data):
    return (model(data.x).argmax(1) != data.targets).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train_ids, test_ids = order[:1400], order[1400:]
    data, test = Digits(x[train_ids], y[train_ids]), Digits(x[test_ids], y[test_ids])

    # Select Via Proxy: a proxy trained for one epoch ranks every example by entropy; keep the
    # most uncertain 70 %, the same share of every class.
    proxy = train(SelectiveLoader(data, batch_size=64, seed=1), make_model(1), epochs=1)
    with torch.no_grad():
        probs = torch.softmax(proxy(data.x), 1).numpy()
    labels = data.targets.numpy()
    subset = select_single(uncertainty(probs, labels)["entropy"], int(0.7 * len(data)), labels)

    features = data.x.numpy()  # cheap per-example features for the AutoAssist gate
    runs = {
        "traditional": {},
        "sb": {"sb": {"beta": 1.0, "window": 256, "selection_batch_size": 64}},
        "stale-sb": {"sb": {"beta": 1.0, "window": 256, "selection_batch_size": 64, "staleness": 2}},
        "autoassist": {"autoassist": {"worker": "thread"}},
    }
    for subset_name, ids in (("all", None), ("svp-70%", subset)):
        for name, methods in runs.items():
            model = make_model(0)
            loader = SelectiveLoader(data, batch_size=32, methods=methods, model=model, subset=ids,
                                     labels=labels, features=features, seed=0)
            train(loader, model, args.epochs)
            c = loader.counters()
            kept = {k: int(v) for k, v in c.items() if k in ("sb/kept", "sb/candidates", "aa/passed", "aa/candidates")}
            print(f"{subset_name:8s} {name:12s} test error {100 * error(model, test):5.2f} %  {kept}")


if __name__ == "__main__":
    main()
