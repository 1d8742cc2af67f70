"""Typed configs for every stage, loaded from params.yaml and validated before any work.

Each stage reads one section of params.yaml. The section is merged into
``OmegaConf.structured(<dataclass>)``, which rejects unknown keys and wrong types; each
dataclass's ``__post_init__`` then checks ranges. Every failure becomes a ``ConfigError``
naming the key, the value and what is allowed.

The dataclasses are not frozen: OmegaConf marks frozen dataclasses read-only at every
level, which makes merging user values into them impossible. They are still treated as
values (nothing in selectkit mutates a config after loading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from selectkit.methods import MethodStack, parse_stack
from selectkit.validation import (ConfigError, check as _check, choice as _choice, deep_merge,  # noqa: F401
                                  flatten, from_dict, load_params, load_section, to_dict)

SOURCES = ["idx", "torchvision", "imagefolder", "npz", "digits", "wordnet", "text"]


@dataclass
class DataConfig:
    """Where the `prepare` stage reads examples from (params.yaml section `data`)."""

    # Images -- idx: Fashion-MNIST/MNIST IDX files; torchvision: a torchvision dataset class by
    # name; imagefolder: torchvision's ImageFolder layout; npz: numpy arrays; digits: sklearn.
    # Text -- wordnet: WordNet 3.0's glosses labelled by supersense (Debian's wordnet-base);
    # text: a JSON Lines or CSV file with a text and a label column.
    source: str = "idx"
    # Directory (idx, imagefolder, torchvision root, wordnet: default /usr/share/wordnet) or file
    # (npz, text). Unused for digits.
    path: Optional[str] = None
    # torchvision dataset class name, e.g. FashionMNIST or CIFAR10 (source=torchvision).
    name: str = "FashionMNIST"
    # Let torchvision download the dataset when it is missing (needs a network).
    download: bool = False
    # Resize every image to image_size x image_size (imagefolder); None keeps sizes as they are.
    image_size: Optional[int] = None
    # Fraction held out as the test split when the source has none (digits, flat folders, npz).
    test_fraction: float = 0.2
    # Seed of that hold-out split.
    split_seed: int = 0
    # Class names; None takes them from the source, or "0".."K-1".
    class_names: Optional[List[str]] = None
    # Fraction of the train split held out (seeded by split_seed, stratified by class) and never
    # trained on by default: RHO-LOSS trains its irreducible-loss model there (input.split:
    # holdout). 0 holds nothing out. Recorded in the store's metadata and fingerprint.
    holdout_fraction: float = 0.0
    # ---- text sources (wordnet, text)
    # text: a test file with the same columns; null holds out test_fraction (stratified, split_seed).
    test_path: Optional[str] = None
    format: str = "auto"  # auto (by suffix: .jsonl/.json/.ndjson, .csv/.tsv) | jsonl | csv
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of the text files
    empty: str = "drop"  # empty or whitespace-only texts: drop (and count) | error
    max_length: int = 128  # tokens per example; longer texts are truncated (counted) or rejected
    long: str = "truncate"  # truncate | error
    # The word vocabulary: the most frequent train-split words (Hugging Face tokenizers, word level).
    vocab_size: int = 16000
    min_frequency: int = 2
    lowercase: bool = True
    # A tokenizer.json (or a text store holding one) to use instead of training one.
    tokenizer: Optional[str] = None

    def __post_init__(self) -> None:
        _choice("data.source", self.source, SOURCES)
        _choice("data.format", self.format, ["auto", "jsonl", "csv"])
        _choice("data.empty", self.empty, ["drop", "error"])
        _choice("data.long", self.long, ["truncate", "error"])
        _check(self.max_length >= 1, "data.max_length", self.max_length, ">= 1 token")
        _check(self.vocab_size >= 16, "data.vocab_size", self.vocab_size, ">= 16")
        _check(self.min_frequency >= 1, "data.min_frequency", self.min_frequency, ">= 1")
        _check(bool(self.text_column) and bool(self.label_column), "data.text_column/label_column",
               (self.text_column, self.label_column), "non-empty column names")
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "0 < x < 1")
        _check(0.0 <= self.holdout_fraction < 1.0, "data.holdout_fraction", self.holdout_fraction,
               "0 <= x < 1 (0 holds nothing out)")
        if self.image_size is not None:
            _check(self.image_size >= 4, "data.image_size", self.image_size, ">= 4 pixels, or null")
        if self.test_path is not None:
            _check(self.source == "text", "data.test_path", self.test_path, "null unless data.source: text")
        if self.source in ("idx", "imagefolder", "npz", "text"):
            _check(bool(self.path), "data.path", self.path, f"a path to the {self.source} data")


@dataclass
class ModelConfig:
    """A model from the registry in selectkit.models, with its constructor arguments."""

    name: str = "cnn"
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class InputConfig:
    """The training input graph: sampler -> load/augment -> prefetch -> (policy) -> Loader."""

    batch_size: int = 128
    # none | flip | crop_flip (random crop with 2-pixel padding plus horizontal flip)
    augment: str = "none"
    # Batches loaded ahead in a background thread; 0 loads in the training thread; auto: a
    # thread on CUDA, with a core to spare, or where loading costs >= 5 % of a training step,
    # else 0 (measured at the start of the run: selectkit/autotune.py)
    prefetch: Any = "auto"
    # A .npy file of train example ids to restrict the sampler to (e.g. an SVP subset).
    subset: Optional[str] = None
    # Which ids training draws from: train = the train split minus the store's holdout
    # (data.holdout_fraction); holdout = the holdout only (RHO-LOSS's irreducible-loss model).
    split: str = "train"
    # Drop the last incomplete batch of each epoch.
    drop_last: bool = False
    # Text: sort each window of this many (candidate) batches of the shuffled order by length
    # before cutting it into batches, then run the batches in a seeded random order, so batches
    # padded to their longest example pad less. 0: off (images have no lengths).
    group_by_length: int = 0

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "input.batch_size", self.batch_size, ">= 1")
        _check(self.group_by_length >= 0, "input.group_by_length", self.group_by_length,
               ">= 0 batches per length-sorting window (0: off)")
        _choice("input.augment", self.augment, ["none", "flip", "crop_flip"])
        _check(self.prefetch == "auto" or (isinstance(self.prefetch, int) and not isinstance(self.prefetch, bool)
                                           and self.prefetch >= 0), "input.prefetch", self.prefetch,
               "an integer >= 0 (batches loaded ahead; 0: none) or auto")
        _choice("input.split", self.split, ["train", "holdout"])
        if self.split == "holdout":
            _check(self.subset is None, "input.subset", self.subset,
                   "null with input.split: holdout (the holdout is the whole candidate set)")


@dataclass
class TrainConfig:
    """One training run (params.yaml section `train`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    # Optimizer and learning-rate schedule; the schedule is a function of training progress.
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    warmup: float = 0.05  # fraction of training spent ramping up linearly from 0
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # step schedule
    gamma: float = 0.1  # step schedule: lr factor at each milestone
    # The stack of selection methods this run uses, by registered name, each with its own
    # params (validated by that method's config dataclass); {} is Traditional training. E.g.
    # {sb: {beta: 2.0}} or {autoassist: {max_lambda: 0.5}, sb: {}}. See selectkit/methods/.
    methods: Dict[str, Any] = field(default_factory=dict)
    # Label under which reports group this run (defaults to the method names joined by "+",
    # in stack order, or "traditional").
    label: Optional[str] = None
    epochs: int = 10  # passes over the (sub)set of candidate examples
    # Wall-clock budget of training in seconds (evaluation excluded); null = epochs only.
    # With a budget, the learning-rate schedule runs over time instead of epochs.
    budget_s: Optional[float] = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16/fp16 autocast on CUDA
    # channels_last memory format for inputs and model (true | false | auto: measured at the
    # start of the run, a training step in each format; selectkit/autotune.py)
    channels_last: Any = "auto"
    threads: Optional[int] = None  # torch intra-op threads; null keeps torch's default
    # Evaluate test error every N optimizer steps (0: at each epoch end only), and at the end.
    eval_every: int = 200
    # Also evaluate each time this many seconds of training wall-clock have passed (0: off).
    # Fairer than steps when methods take different numbers of steps per epoch.
    eval_every_s: float = 0.0
    eval_batch_size: int = 1000
    log_every: int = 50  # steps between training-loss points
    checkpoint_every: int = 500  # steps between checkpoints (also at each epoch end)
    # Processes training together with DistributedDataParallel (gloo on the CPU, nccl on CUDA,
    # one GPU each). > 1: the train stage launches itself under torchrun; a run already started
    # by torchrun takes its size from there. input.batch_size is per process.
    processes: int = 1
    # How long a collective waits for another rank (its evaluation and writes included) before
    # the run fails; a rank that dies fails the run at once (torchrun stops the others).
    dist_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _choice("train.optimizer", self.optimizer, ["sgd", "adam"])
        _choice("train.schedule", self.schedule, ["cosine", "step", "constant"])
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "0 <= x < 1")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(0 <= self.warmup < 1, "train.warmup", self.warmup, "0 <= x < 1")
        _check(0 < self.gamma <= 1, "train.gamma", self.gamma, "0 < x <= 1")
        _check(all(0 < m < 1 for m in self.milestones), "train.milestones", self.milestones,
               "fractions of training strictly between 0 and 1")
        _check(self.epochs >= 1, "train.epochs", self.epochs, ">= 1")
        if self.budget_s is not None:
            _check(self.budget_s > 0, "train.budget_s", self.budget_s, "> 0 seconds, or null")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "train.device", self.device, "auto, cpu, cuda or cuda:N")
        _check(isinstance(self.channels_last, bool) or self.channels_last == "auto", "train.channels_last",
               self.channels_last, "true, false or auto")
        if self.threads is not None:
            _check(self.threads >= 1, "train.threads", self.threads, ">= 1, or null")
        for key in ("eval_every", "log_every", "checkpoint_every"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), ">= 0")
        _check(self.eval_every_s >= 0, "train.eval_every_s", self.eval_every_s, ">= 0 seconds")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, ">= 1")
        _check(isinstance(self.processes, int) and self.processes >= 1, "train.processes", self.processes,
               "an integer >= 1 (processes under torchrun)")
        _check(self.dist_timeout_s > 0, "train.dist_timeout_s", self.dist_timeout_s, "> 0 seconds")
        # name -> the method's typed config, in stack order; each method checks itself against
        # the rest of the run (e.g. SB's selection batch against input.batch_size)
        self.methods = parse_stack(self.methods, "train.methods")
        for method, mcfg in self.stack:
            method.check(mcfg, self)
        if self.label is None:
            self.label = "+".join(self.methods) or "traditional"

    @property
    def stack(self) -> MethodStack:
        """The run's methods as (registered Method, its config) pairs, in stack order."""
        from selectkit.methods import stack_of

        return stack_of(self.methods)


# Keys of the `train` section that older params files used; named in the error so a user
# can move them instead of guessing.
MOVED_TRAIN_KEYS = {
    "policy": "train.policy was replaced by the method stack train.methods: write `methods: {}` for "
              "Traditional, `methods: {sb: {...}}` for Selective-Backprop / Stale-SB",
    "sb": "train.sb moved to train.methods.sb (the keys inside are unchanged)",
    "autoassist": "train.autoassist moved to train.methods.autoassist (drop `enabled`: a method is on "
                  "when it is in the stack)",
}


@dataclass
class TrackingConfig:
    """MLflow tracking (params.yaml section `tracking`)."""

    # false: no MLflow at all (not imported, no store, no run; about 5 s less per stage on 2
    # cores); the DVC metrics and plots files (metrics.json, run.json, curve.csv) are written.
    enabled: bool = True
    # Tracking URI; null uses $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db next to params.yaml.
    uri: Optional[str] = None
    experiment: str = "selectkit"
    pipeline: str = "default"  # tag naming the pipeline a run belongs to
    # Log each trained model with MLflow's PyTorch flavour (mlflow.pytorch.load_model reads it back).
    log_model: bool = True
    # Also register it under this name in the MLflow model registry (a new version per run).
    registered_model: Optional[str] = None


@dataclass
class ReportConfig:
    """The report stage (params.yaml section `report`)."""

    baseline: str = "traditional"  # label whose final error sets the target errors
    targets: List[float] = field(default_factory=lambda: [1.1, 1.2, 1.4])
    # Measure per-example train-step and selection-forward costs here and report modelled
    # speedups (each run's counts times those costs) beside the measured ones.
    modelled: bool = True
    cost_reps: int = 20

    def __post_init__(self) -> None:
        _check(all(t >= 1 for t in self.targets), "report.targets", self.targets,
               "multiples of the baseline's final error, each >= 1")
        _check(self.cost_reps >= 1, "report.cost_reps", self.cost_reps, ">= 1")


def _layer(values: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """deep_merge, except that a ``model`` in ``over`` replaces the model whole (another
    architecture's args must not inherit the section's)."""
    merged = deep_merge(values, {k: v for k, v in over.items() if k != "model"})
    if "model" in over:
        merged["model"] = over["model"]
    return merged


def load_train_config(path: str | Path, section: str = "train", method: Optional[str] = None,
                      merge: Sequence[str] = (), **overrides: Any) -> TrainConfig:
    """The ``train`` section, with ``method.<name>`` of the same params file merged on top,
    then each dotted params key of ``merge`` (e.g. ``proxy_models.mlp``) in order.

    Pipelines comparing methods keep their shared hyperparameters in ``train`` and only each
    method's own knobs under ``method.<name>``, so no method is retuned by accident; an SVP
    ensemble over architectures keeps each member's model under ``proxy_models.<name>``.
    """
    params = load_params(path)
    values = params.get(section) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"params section {section!r} must be a mapping, got {values!r}")
    if method is not None:
        methods = params.get("method") or {}
        if method not in methods:
            raise ConfigError(f"--method {method!r} has no section method.{method} in {path}; "
                              f"defined: {sorted(methods)}")
        over = methods[method] or {}
        if not isinstance(over, dict):
            raise ConfigError(f"params method.{method} must be a mapping, got {over!r}")
        values = _layer(values, {"label": method, **over})
    for key in merge:
        over = params
        for part in key.split("."):
            if not isinstance(over, dict) or part not in over:
                raise ConfigError(f"--merge {key!r}: {path} has no params key {key}")
            over = over[part]
        if not isinstance(over, dict):
            raise ConfigError(f"params {key} must be a mapping to merge over {section}, got {over!r}")
        values = _layer(values, over)
    values = deep_merge(values, {k: v for k, v in overrides.items() if v is not None})
    return train_config(values, section)


def train_config(values: Optional[Dict[str, Any]], section: str = "train") -> TrainConfig:
    """A validated TrainConfig from a plain mapping, naming moved keys of older params files."""
    for key, fix in MOVED_TRAIN_KEYS.items():
        if key in (values or {}):
            raise ConfigError(f"{section}.{key} is no longer a params key: {fix}. See README, "
                              f"'Extending selectkit'.")
    methods = (values or {}).get("methods")
    if methods is not None and not isinstance(methods, dict):
        parse_stack(methods, f"{section}.methods")  # raises, naming the expected mapping
    return from_dict(TrainConfig, values, section)


