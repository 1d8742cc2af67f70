"""What a selection method is to the rest of selectkit: a config, a slot, and how it wires in.

A method package (selectkit/methods/<name>/) holds its config dataclass, its pure functions,
its node(s), its report section and a method card (README.md), and exports one ``METHOD``.
The registry (selectkit/methods/__init__.py) lists them; the graph builder, the trainer and
the report reach a method only through the fields below, so adding one edits no core module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # imported for type hints only: the registry must stay import-light
    from torchdata.nodes import BaseNode

# Where in the input graph a method acts, in graph order:
SLOTS = {
    "ids": "before loading, on batches of example ids (a rejected example is never loaded)",
    "batches": "after loading, on loaded batches in the training thread (may run the live model)",
    "weight": "a per-example weight on the training loss",
    "stages": "DVC stages before training (its product, e.g. a subset, feeds input.subset)",
}
SLOT_ORDER = ("ids", "batches", "weight")

# Called after every training forward with (ids, per-example float32 CPU losses, step).
LossListener = Callable[[Any, Any, int], None]


@dataclass
class MethodContext:
    """What a method's ``build`` may use while wiring its node(s) into the input graph.

    Attributes:
        task: the run's Task (example loading, features, labels, losses).
        seed: the run's seed; every random node derives its generator from it.
        batch_size: the training batch size the trainer wants out of the graph.
        candidate_batch_size: ids per sampled batch (what ``ids`` methods re-batch to).
        epochs: planned epochs (methods with warm-ups check against it).
        model: a ModelHandle scoring batches with the live model (None without a model).
        loss_table: the shared per-example LossTable (present when a method needs it).
        listeners: ``(name, listener)`` pairs the trainer calls after every training forward.
        exchange: the graph's Exchange with the other ranks (inert alone); see ``channel``.
        rank_seed: the seed of this rank's own random draws: ``seed`` alone, distinct per rank
            under several processes. Draws each rank makes on its own shard (keep/skip) use
            it; draws every rank must make alike (a global prune mask) use ``seed``.
        load: the graph's loading function (ids -> rows with inputs and targets), for a node
            that loads rows itself.
        defer: predicates ``epoch -> bool`` a node in slot ``batches`` may add where it decides
            on ids alone (e.g. Stale-SB's stale epochs): in those epochs candidates come
            unloaded (``ids`` and position only, ``deferred`` True) and the node loads what it
            keeps with ``load``. Offered only where loading runs in the consumer's thread
            (no prefetch thread); otherwise None.
    """

    task: Any
    seed: int
    batch_size: int
    candidate_batch_size: int = 0
    epochs: int = 1
    model: Any = None
    loss_table: Any = None
    listeners: List[Tuple[str, Any]] = field(default_factory=list)
    exchange: Any = None
    rank_seed: Optional[int] = None
    load: Any = None
    defer: Optional[List[Any]] = None

    def __post_init__(self) -> None:
        if self.rank_seed is None:
            self.rank_seed = self.seed

    def channel(self, name: str, receive: Callable[[Any], None]):
        """A channel to the other ranks: what this rank ``send``s reaches every other rank's
        ``receive`` (a float64 array) once per step. Inert with one process."""
        if self.exchange is None:
            from selectkit.exchange import Exchange

            self.exchange = Exchange(live=False)
        return self.exchange.channel(name, receive)

    def add_listener(self, name: str, listener: Any) -> None:
        """Receive the trainer's per-example losses. A listener with ``state_dict``,
        ``load_state_dict`` and ``counters`` methods is checkpointed and reported with the graph."""
        if any(n == name for n, _ in self.listeners):
            raise ValueError(f"two loss listeners named {name!r}")
        self.listeners.append((name, listener))


@dataclass
class ReportSection:
    """A method's part of the report.

    Attributes:
        summarise: runs of one label -> that method's figures (None when they hold none).
        markdown: ``{label: figures}`` -> markdown text appended to the report.
        plot: optional ``(runs, path)`` writing a PNG named ``plot_name``.
    """

    summarise: Callable[[List[Dict[str, Any]]], Optional[Dict[str, Any]]]
    markdown: Callable[[Dict[str, Dict[str, Any]]], str]
    plot: Optional[Callable[[List[Dict[str, Any]], Any], None]] = None
    plot_name: str = ""


def _same_batch(cfg: Any, batch_size: int) -> int:
    return batch_size


def _no_check(cfg: Any, train: Any) -> None:
    return None


def _no_selection(cfg: Any) -> Optional[Dict[str, Any]]:
    return None


def _no_upstream(cfg: Any) -> float:
    return 0.0


@dataclass(frozen=True)
class Method:
    """A registered selection method.

    Attributes:
        name: the key under ``train.methods`` (and the counters' namespace, e.g. ``sb/kept``).
        slot: one of SLOTS.
        config: its config dataclass (validated in ``__post_init__``).
        title: one line for listings and the README.
        build: ``(node, ctx, cfg) -> node`` wrapping the stream (None for ``stages`` methods).
        candidate_batch_size: ``(cfg, batch_size) -> ids per sampled batch`` it wants.
        check: ``(cfg, train_config)`` raising ConfigError when the run cannot use this config.
        uses_loss_table: the graph creates the shared LossTable and feeds it.
        exclusive: no other method may share its slot.
        counters: counter names (namespaced) its node always reports.
        offered, passed: the counters of candidates it was offered and of those it passed on
            (the shared tests check them against what the trainer saw, across resumes).
        selection: ``cfg -> {batch_size, mode, precision}`` of its selection forwards, for
            modelled costs; None when it runs none.
        upstream_s: ``cfg -> seconds`` of the cached upstream stages a run with this config
            consumes (e.g. an irreducible-loss model's training and scoring), which the report
            adds to the run's training time end to end; 0 for methods that need none.
        tune_selection_batch: ``(cfg, n) -> cfg`` with selection batches of ``n``, for methods
            whose selection batch size may be ``auto`` (measured: selectkit/autotune.py); None
            where that size is part of the method (RHO-LOSS keeps a fraction of each batch).
        report: its ReportSection, if it adds figures to the report.
        example: small, deterministic params used by the docs and the registry-driven tests.
        make_example: ``(task, directory) -> params`` for methods whose runs read an artifact:
            writes a tiny one for ``task`` under ``directory`` and returns ``example`` pointing
            at it (the registry-driven tests build every method through it).
    """

    name: str
    slot: str
    config: type
    title: str
    build: Optional[Callable[["BaseNode", MethodContext, Any], "BaseNode"]] = None
    candidate_batch_size: Callable[[Any, int], int] = _same_batch
    check: Callable[[Any, Any], None] = _no_check
    uses_loss_table: bool = False
    exclusive: bool = True
    counters: Sequence[str] = ()
    offered: str = ""
    passed: str = ""
    selection: Callable[[Any], Optional[Dict[str, Any]]] = _no_selection
    upstream_s: Callable[[Any], float] = _no_upstream
    tune_selection_batch: Optional[Callable[[Any, int], Any]] = None
    report: Optional[ReportSection] = None
    example: Dict[str, Any] = field(default_factory=dict)
    make_example: Optional[Callable[[Any, Any], Dict[str, Any]]] = None

    def __post_init__(self) -> None:
        if self.slot not in SLOTS:
            raise ValueError(f"method {self.name!r}: slot={self.slot!r} should be one of {sorted(SLOTS)}")
        if (self.slot == "stages") != (self.build is None):
            raise ValueError(f"method {self.name!r}: a method in slot {self.slot!r} "
                             + ("has no node to build" if self.slot == "stages" else "needs a build function"))
