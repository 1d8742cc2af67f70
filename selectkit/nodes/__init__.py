"""torchdata.nodes BaseNode subclasses that selectkit's input graphs are built from."""

from selectkit.nodes.filter import FilterRows, Rebatch
from selectkit.nodes.load import LoadBatch
from selectkit.nodes.sampler import IdBatchSampler

__all__ = ["FilterRows", "IdBatchSampler", "LoadBatch", "Rebatch"]
