"""Select Via Proxy (Coleman et al., ICLR 2020): proxy -> score -> choose, as cached DVC stages;
the chosen subset feeds any training run through ``input.subset``. See README.md beside this file."""

from __future__ import annotations

from selectkit.methods.base import Method
from selectkit.methods.svp.config import ChooseConfig, ScoreConfig  # noqa: F401  (re-exported)

METHOD = Method(
    name="svp",
    slot="stages",
    config=ChooseConfig,
    title="Select Via Proxy: a cheap proxy ranks examples once; targets train on the chosen subset",
)
