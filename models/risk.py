"""Churn risk bands: ``low`` / ``medium`` / ``high`` by the served churn probability against two configurable
thresholds (``models.actions`` has the other things a shop acts on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.errors import LifecycleError

if TYPE_CHECKING:
    import numpy as np

RISKS = ("low", "medium", "high")


@dataclass(frozen=True)
class RiskBands:
    """Churn probability at or above ``medium`` is medium risk, at or above ``high`` high risk."""

    medium: float = 0.4
    high: float = 0.7

    def __post_init__(self):
        if not 0 < self.medium < self.high < 1:
            raise LifecycleError(f"churn risk thresholds must be 0 < medium < high < 1: churn_risk.medium is "
                                 f"{self.medium}, churn_risk.high {self.high}")

    def band(self, probability) -> np.ndarray:
        """Each probability's band (None where it is missing)."""
        import numpy as np  # here, not at the top: the configuration reads this module at the CLI's start

        p = np.asarray(probability, dtype=float)
        bands = np.array(RISKS, dtype=object)[(p >= self.medium).astype(int) + (p >= self.high)]
        return np.where(np.isnan(p), None, bands)
