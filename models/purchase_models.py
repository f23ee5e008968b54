"""The purchase models by the names the configuration uses (``btyd.model``, ``models.choices``)."""

from __future__ import annotations

from models.bgnbd import BGNBD
from models.btyd import PurchaseModel
from models.mbgnbd import MBGNBD
from models.pareto_nbd import ParetoNBD

PURCHASE_MODELS: dict[str, type[PurchaseModel]] = {model.name: model for model in (BGNBD, MBGNBD, ParetoNBD)}
