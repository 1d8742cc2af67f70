"""torchdata.nodes BaseNode subclasses that every input graph is built from; method-specific
nodes live in their method's package (selectkit/methods/<name>/node.py)."""

from selectkit.nodes.filter import FilterRows, Rebatch
from selectkit.nodes.sampler import IdBatchSampler

__all__ = ["FilterRows", "IdBatchSampler", "Rebatch"]
