"""MBG/NBD (Batislam, Denizel & Filiztekin 2007): BG/NBD with a drop-out chance at the first purchase too.

A customer may leave right after their first order, so a customer without a repeat purchase is
no longer certainly alive: P(alive) falls with the time since that order, like everyone else's.
Likelihood, P(alive) and expected purchases are BG/NBD's with one more drop-out chance (``b + x``
where BG/NBD has ``b + x - 1``; see ``models.bgnbd``). The fit maximizes ``lifetimes``'
``ModifiedBetaGeoFitter`` likelihood with its gradient: the same estimates.
"""

from __future__ import annotations

from lifetimes import ModifiedBetaGeoFitter

from models.bgnbd import BGNBD


class MBGNBD(BGNBD):
    """MBG/NBD: drop-out with probability p after every purchase, the first included."""

    name = "mbgnbd"
    label = "MBG/NBD"
    _fitter = ModifiedBetaGeoFitter
    _first_purchase_chance = 1
