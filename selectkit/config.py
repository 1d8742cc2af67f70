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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

C = TypeVar("C")


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _choice(key: str, value: Any, choices: List[str]) -> None:
    _check(value in choices, key, value, f"one of {choices}")


SOURCES = ["idx", "torchvision", "imagefolder", "npz", "digits"]


@dataclass
class DataConfig:
    """Where the `prepare` stage reads examples from (params.yaml section `data`)."""

    # idx: Fashion-MNIST/MNIST IDX files; torchvision: a torchvision dataset class by name;
    # imagefolder: torchvision's ImageFolder layout; npz: numpy arrays; digits: sklearn.
    source: str = "idx"
    # Directory (idx, imagefolder, torchvision root) or file (npz). Unused for digits.
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

    def __post_init__(self) -> None:
        _choice("data.source", self.source, SOURCES)
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "0 < x < 1")
        if self.image_size is not None:
            _check(self.image_size >= 4, "data.image_size", self.image_size, ">= 4 pixels, or null")
        if self.source in ("idx", "imagefolder", "npz"):
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
    # Batches loaded ahead in a background thread; 0 loads in the training thread.
    prefetch: int = 2
    # A .npy file of train example ids to restrict the sampler to (e.g. an SVP subset).
    subset: Optional[str] = None
    # Drop the last incomplete batch of each epoch.
    drop_last: bool = False

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "input.batch_size", self.batch_size, ">= 1")
        _choice("input.augment", self.augment, ["none", "flip", "crop_flip"])
        _check(self.prefetch >= 0, "input.prefetch", self.prefetch, ">= 0")


@dataclass
class SBConfig:
    """Selective-Backprop and Stale-SB (train.policy: sb), params section `train.sb`."""

    beta: float = 2.0  # keep probability CDF_R(loss) ** beta; larger keeps fewer
    window: int = 1024  # R: how many recent losses the percentile is taken over
    # Candidates scored per selection forward; larger than input.batch_size amortises calls.
    selection_batch_size: int = 128
    floor: float = 0.0  # minimum keep probability
    warmup_epochs: int = 0  # epochs of Traditional training before selection starts
    selection_mode: str = "eval"  # eval | train: the model's mode during selection forwards
    # fp32 | bf16: precision of selection forwards (bf16 autocast; on CPUs with AVX512-BF16 it
    # halves their cost, elsewhere it may be slower: measure with benchmarks/cost_ratio.py)
    selection_precision: str = "fp32"
    staleness: int = 1  # 1 = SB; n > 1 = Stale-SB: selection forwards every n-th epoch only

    def __post_init__(self) -> None:
        _check(self.beta > 0, "train.sb.beta", self.beta, "> 0 (beta -> 0 keeps everything)")
        _check(self.window >= 1, "train.sb.window", self.window, ">= 1")
        _check(0.0 <= self.floor <= 1.0, "train.sb.floor", self.floor, "0 <= x <= 1")
        _check(self.warmup_epochs >= 0, "train.sb.warmup_epochs", self.warmup_epochs, ">= 0")
        _check(self.staleness >= 1, "train.sb.staleness", self.staleness, ">= 1 (1 is plain SB)")
        _choice("train.sb.selection_mode", self.selection_mode, ["eval", "train"])
        _choice("train.sb.selection_precision", self.selection_precision, ["fp32", "bf16"])


@dataclass
class AutoAssistConfig:
    """The AutoAssist gate (params `train.autoassist`): an assistant trained off the training
    thread predicts which candidates are worth loading; see selectkit/nodes/autoassist.py."""

    enabled: bool = False
    # Features directory written by stages/features.py; null computes pooled pixels at start.
    features: Optional[str] = None
    downsample: int = 2  # pooling factor of the pixel features when computed at start
    lr: float = 0.05  # the assistant's fixed learning rate (one step per published batch)
    weight_decay: float = 1e-4  # L2 on the assistant's weights
    loss_ema: float = 0.05  # EMA rate of T_k (the loss threshold) per published batch
    accuracy_ema: float = 0.02  # EMA rate of lambda_k (the trust in the assistant) per batch
    queue_size: int = 16  # published batches that may wait for the assistant before drops
    worker: str = "thread"  # thread | process | inline (synchronous: deterministic, for tests)
    shadow: bool = False  # decide and count, but pass everything (measure the assistant alone)
    warmup_epochs: int = 0  # epochs passing everything before the gate may reject
    # Cap on lambda_k: the safeguard rate never falls below 1 - max_lambda (1.0: the paper's rule).
    max_lambda: float = 1.0

    def __post_init__(self) -> None:
        _check(0 <= self.max_lambda <= 1, "train.autoassist.max_lambda", self.max_lambda, "0 <= x <= 1")
        for key in ("loss_ema", "accuracy_ema"):
            v = getattr(self, key)
            _check(0 < v < 1, f"train.autoassist.{key}", v, "0 < x < 1 (an EMA rate)")
        _check(self.lr > 0, "train.autoassist.lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, "train.autoassist.weight_decay", self.weight_decay, ">= 0")
        _check(self.queue_size >= 1, "train.autoassist.queue_size", self.queue_size, ">= 1")
        _check(self.downsample >= 1, "train.autoassist.downsample", self.downsample, ">= 1")
        _check(self.warmup_epochs >= 0, "train.autoassist.warmup_epochs", self.warmup_epochs, ">= 0")
        _choice("train.autoassist.worker", self.worker, ["thread", "process", "inline"])


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
    # The selection policy shaping the batch stream; see selectkit.graph.POLICIES.
    policy: str = "traditional"
    sb: SBConfig = field(default_factory=SBConfig)
    # The AutoAssist gate before loading; composes with any policy (e.g. sb).
    autoassist: AutoAssistConfig = field(default_factory=AutoAssistConfig)
    # Label under which reports group this run (defaults to the policy name, prefixed
    # "autoassist+" with the gate on; plain "autoassist" with the traditional policy).
    label: Optional[str] = None
    epochs: int = 10  # passes over the (sub)set of candidate examples
    # Wall-clock budget of training in seconds (evaluation excluded); null = epochs only.
    # With a budget, the learning-rate schedule runs over time instead of epochs.
    budget_s: Optional[float] = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16/fp16 autocast on CUDA
    channels_last: bool = True
    threads: Optional[int] = None  # torch intra-op threads; null keeps torch's default
    # Evaluate test error every N optimizer steps (0: at each epoch end only), and at the end.
    eval_every: int = 200
    # Also evaluate each time this many seconds of training wall-clock have passed (0: off).
    # Fairer than steps when methods take different numbers of steps per epoch.
    eval_every_s: float = 0.0
    eval_batch_size: int = 1000
    log_every: int = 50  # steps between training-loss points
    checkpoint_every: int = 500  # steps between checkpoints (also at each epoch end)

    def __post_init__(self) -> None:
        from selectkit.graph import POLICIES  # local import: graph imports config

        _choice("train.policy", self.policy, sorted(POLICIES))
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
        if self.threads is not None:
            _check(self.threads >= 1, "train.threads", self.threads, ">= 1, or null")
        for key in ("eval_every", "log_every", "checkpoint_every"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), ">= 0")
        _check(self.eval_every_s >= 0, "train.eval_every_s", self.eval_every_s, ">= 0 seconds")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, ">= 1")
        if self.policy == "sb":
            _check(self.sb.selection_batch_size >= self.input.batch_size, "train.sb.selection_batch_size",
                   self.sb.selection_batch_size, f">= input.batch_size ({self.input.batch_size}): smaller "
                   f"selection batches only add per-call overhead")
            _check(self.sb.warmup_epochs < self.epochs, "train.sb.warmup_epochs", self.sb.warmup_epochs,
                   f"< train.epochs ({self.epochs}), or selection never starts")
        if self.label is None:
            if self.autoassist.enabled:
                self.label = "autoassist" if self.policy == "traditional" else f"autoassist+{self.policy}"
            else:
                self.label = self.policy


@dataclass
class ScoreConfig:
    """SVP's score stage (params section `score`): one inference pass of a proxy over the store."""

    batch_size: int = 1000
    device: str = "auto"
    channels_last: bool = True
    embeddings: bool = False     # also store the penultimate-layer embedding (float32, N x D)

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "score.batch_size", self.batch_size, ">= 1")


SVP_RULES = ["single", "rank_sum", "alternating", "random"]


@dataclass
class ChooseConfig:
    """SVP's choose stage (params section `choose`): scores -> a subset artifact."""

    metric: str = "entropy"  # least_confidence | margin | entropy | loss
    # single: one proxy's ranking; rank_sum / alternating: ensemble combinations;
    # random: a uniform random subset of the same size (the baseline)
    rule: str = "rank_sum"
    fraction: Optional[float] = 0.5  # share of the train split to keep, in (0, 1]
    size: Optional[int] = None  # or an exact number of examples (set fraction: null)
    balance: bool = False  # keep the same share of every class
    seed: int = 0  # seeds the random rule

    def __post_init__(self) -> None:
        from selectkit.methods.svp import METRICS

        _choice("choose.metric", self.metric, list(METRICS))
        _choice("choose.rule", self.rule, SVP_RULES)
        _check((self.fraction is None) != (self.size is None), "choose.fraction/size",
               (self.fraction, self.size), "exactly one of fraction and size (set the other to null)")
        if self.fraction is not None:
            _check(0.0 < self.fraction <= 1.0, "choose.fraction", self.fraction, "0 < x <= 1")
        if self.size is not None:
            _check(self.size >= 1, "choose.size", self.size, ">= 1")


@dataclass
class TrackingConfig:
    """MLflow tracking (params.yaml section `tracking`)."""

    # Tracking URI; null uses $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db next to params.yaml.
    uri: Optional[str] = None
    experiment: str = "selectkit"
    pipeline: str = "default"  # tag naming the pipeline a run belongs to


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


def from_dict(cls: Type[C], values: Optional[Dict[str, Any]], section: str = "") -> C:
    """Validate a plain mapping against a config dataclass.

    Args:
        cls: the dataclass type.
        values: user values (e.g. one params.yaml section); None means all defaults.
        section: the section's name, used in messages.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: naming the offending key, its value and what is allowed.
    """
    prefix = f"{section}." if section else ""
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(values or {}))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = prefix + (getattr(e, "full_key", "") or "")
        first = str(e).splitlines()[0]
        if "not in" in first:
            allowed = [f.name for f in dataclasses.fields(cls)]
            raise ConfigError(f"unknown key {key!r} in params: {first}. Allowed keys of "
                              f"{section or cls.__name__}: {allowed}. Fix the spelling or remove it.") from None
        raise ConfigError(f"params key {key!r}: {first}") from None
    except ValueError as e:  # raised by __post_init__ of a nested dataclass
        raise ConfigError(str(e)) from None


def load_params(path: str | Path) -> Dict[str, Any]:
    """Read a params.yaml into a plain dict, with a clear error if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"params file {p} not found: run from the pipeline's folder "
                                f"or pass --params PATH")
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:  # yaml errors come in several types
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    out = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(out, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, got {type(out).__name__}")
    return out


def load_section(path: str | Path, section: str, cls: Type[C], **overrides: Any) -> C:
    """Load and validate one section of a params file, with command-line overrides on top."""
    params = load_params(path)
    values = params.get(section)
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"params section {section!r} must be a mapping, got {values!r}")
    values = dict(values or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, section)


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``over`` on top of ``base``, merging nested mappings key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _layer(values: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """deep_merge, except that a ``model`` in ``over`` replaces the model whole (another
    architecture's args must not inherit the section's)."""
    merged = deep_merge(values, {k: v for k, v in over.items() if k != "model"})
    if "model" in over:
        merged["model"] = over["model"]
    return merged


def load_train_config(path: str | Path, section: str = "train", method: Optional[str] = None,
                      merge: Sequence[str] = (), **overrides: Any) -> "TrainConfig":
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
    return from_dict(TrainConfig, values, section)


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A config dataclass as a plain nested dict (for checkpoints and tracking)."""
    return dataclasses.asdict(cfg)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
