"""The base of every experiment-file section, and the limits shared by several sections."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Most windows of text in a calibration or held-out set (sizes beyond are mistakes).
MAX_WINDOWS = 100_000
#: Seeds are 0..2**63 - 1 (what torch and numpy both take).
MAX_SEED = 2**63 - 1


class Strict(BaseModel):
    """A section of an experiment file: unknown keys refused, frozen, no inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
