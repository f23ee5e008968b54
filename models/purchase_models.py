"""The purchase models by the names the configuration uses (``btyd.model``)."""

from __future__ import annotations

from models.bgnbd import BGNBD
from models.btyd import PurchaseModel
from models.mbgnbd import MBGNBD
from models.pareto_nbd import ParetoNBD

AUTO = "auto"  # choose among them on the holdout (training.train.choose_purchase_model)
PURCHASE_MODELS: dict[str, type[PurchaseModel]] = {model.name: model for model in (BGNBD, MBGNBD, ParetoNBD)}
