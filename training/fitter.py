"""BTYD fits that recover from failure and keep what they needed or found as notes for the user."""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from features.errors import LifecycleError
from models.btyd import PurchaseModel
from models.gamma_gamma import SpendModel
from models.likelihood import FitFailed
from models.rows import BuyerRows

# Penalizers tried, in order, when a fit fails at the configured one (see ``Fitter``).
RETRY_PENALIZERS = (0.001, 0.01, 0.1)


@dataclass
class Fitter:
    """Fits BTYD models, recovering from failure with a penalizer, and keeps notes for the user.

    A purchase model's fit that finds no usable maximum (``FitFailed``) at the configured ``penalizer``
    is tried again with each larger one of ``RETRY_PENALIZERS``; the notes say which model needed which.
    Warnings from the fits (parameters at the edge of their range) become notes too, once each.
    """

    penalizer: float = 0.0
    found: dict[str, list[str]] = field(default_factory=dict)  # note -> the fits it is about
    fitted: dict[str, tuple] = field(default_factory=dict)  # a fit's inputs -> (model, its notes)

    def fit(self, model_type: type[PurchaseModel] | type[SpendModel], *columns, weights=None, what: str = ""):
        """``model_type(penalizer).fit(*columns, weights=weights)``, with the retries (Gamma-Gamma takes no
        penalizer: ``SpendModel`` is fitted once); ``what`` names the fit in the notes. A fit on inputs fitted before
        is not repeated (two of the protocol's dates coincide where the history is short)."""
        digest = hashlib.blake2b(model_type.__name__.encode())
        for column in (*columns, *([] if weights is None else [weights])):
            digest.update(np.ascontiguousarray(column, dtype=float).tobytes())
        key = digest.hexdigest()
        if (known := self.fitted.get(key)) is not None:
            model, lines = known
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model, failures = self._fit(model_type, columns, weights, what)
            lines = [str(warning.message) for warning in caught] + failures
            self.fitted[key] = model, lines
        for line in lines:
            self.note(line, what)
        return model

    def _fit(self, model_type, columns, weights, what: str) -> tuple:
        failures = []
        penalized = issubclass(model_type, PurchaseModel)
        penalizers = (self.penalizer, *(p for p in RETRY_PENALIZERS if p > self.penalizer)) if penalized else (None,)
        for penalizer in penalizers:
            try:
                model = (model_type(penalizer) if penalized else model_type()).fit(*columns, weights=weights)
            except FitFailed as exc:
                failures.append(f"{exc} (penalizer {penalizer:g})" if penalized else str(exc))
                continue
            if failures:
                return model, [f"{'; '.join(failures)}; fitted with penalizer {penalizer:g} (btyd.penalizer sets "
                               "the first one tried)"]
            return model, []
        if not penalized:
            raise LifecycleError(f"{failures[0]} [{what}]")
        tried = ", ".join(f"{p:g}" for p in penalizers)
        raise LifecycleError(f"{'; '.join(failures)} [{what}]: no penalizer helped (tried {tried}); "
                             "check the order log for one customer or amount that dwarfs the rest")

    @property
    def notes(self) -> list[str]:
        """One line per distinct note, with the fits it is about."""
        return [f"{note} [{', '.join(whats)}]" for note, whats in self.found.items()]

    def note(self, line: str, what: str) -> None:
        """Keep ``line`` as a note about the fit ``what`` (one note per line, whatever the values at an edge)."""
        line = re.sub(r" \([-+.e\d]+\)", "", line)  # the values at the edge: one note per parameter
        self.found.setdefault(line, []).append(what)

    def btyd(self, buyers: BuyerRows, model_type: type[PurchaseModel], what: str) -> tuple[PurchaseModel, SpendModel]:
        """The purchase model and the spend model fitted on ``buyers``."""
        rows = buyers.purchases
        purchases = self.fit(model_type, rows["frequency"], rows["recency"], rows["T"], weights=rows["count"],
                             what=what)
        return purchases, self.spend(buyers, what)

    def spend(self, buyers: BuyerRows, what: str) -> SpendModel:
        """The spend model fitted on ``buyers``."""
        rows = buyers.spend
        return self.fit(SpendModel, rows["frequency"], rows["monetary_value"], weights=rows["count"], what=what)
