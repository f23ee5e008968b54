"""A seeded, vectorised simulator of an online shop with known ground truth.

Purchasing follows a BTYD story exactly, in continuous time: after the first purchase, repeat
purchases arrive as a Poisson process with rate ``lambda ~ Gamma(r, alpha)`` (rate parameter
alpha, per day) until the customer drops out. ``process="bgnbd"`` (Fader, Hardie & Lee 2005):
after each repeat purchase the customer drops out with probability ``p ~ Beta(a, b)``.
``process="pareto_nbd"`` (Schmittlein, Morrison & Colombo 1987): the lifetime after the first
purchase is exponential with rate ``mu ~ Gamma(s, beta)``. Order values follow Gamma-Gamma:
``z ~ Gamma(shape=p_gg, rate=nu)`` with ``nu ~ Gamma(shape=q, rate=gamma)``.

A latent engagement level, ``engagement = lambda / E[lambda]``, drives the events (sessions,
product views, cart adds, email opens and clicks, referrals, NPS): while the customer is alive at
intensity ``0.3 + 0.7 * engagement`` (infrequent buyers still browse), after dropout at 3 % of it.
So engagement carries real signal about churn while the purchase process keeps exactly the
model's distribution, and a fit can recover its parameters.

Vectorised generation (BG/NBD): with N ~ Poisson(lambda * T) arrivals in the window and
J ~ Geometric(p) purchases until dropout, the customer makes min(N, J) repeat purchases. If J <= N
the dropout time is the J-th of N uniform order statistics, T * Beta(J, N - J + 1), and the first
J - 1 purchases are uniform before it; otherwise all N arrivals are uniform on [0, T] and, by
memorylessness, dropout comes T + Gamma(J - N, lambda) after the first purchase. (Pareto/NBD:
Poisson(lambda * min(lifetime, T)) purchases, uniform before the end.) The ground truth, the
customer's true P(alive) at the end included, is documented in docs/simulator.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from scipy.special import expit

CHANNELS = ("organic", "paid_search", "social", "email", "referral", "affiliate")
_CHANNEL_COST = np.array([0.0, 25.0, 15.0, 3.0, 10.0, 8.0])  # mean acquisition cost per channel
_CHANNEL_TILT = np.array([0.0, -0.2, -0.4, 0.2, 0.6, -0.1])  # log-odds shift per unit log-engagement
_DAY_MS = 86_400_000


class SimulationParams(BaseModel):
    """Every knob of a simulation; together with the seed it determines the output exactly."""

    customers: int = Field(10_000, ge=1)
    seed: int = 0
    start: str = "2024-01-01"
    days: int = Field(730, ge=30, description="observation length; nothing happens after start + days")
    acquisition_days: int = Field(365, ge=1, description="signups are uniform over the first this many days")
    prospect_share: float = Field(0.25, ge=0, lt=1, description="signed-up customers who never buy")
    process: Literal["bgnbd", "pareto_nbd"] = Field("bgnbd", description="how customers drop out")
    r: float = Field(0.25, gt=0)
    alpha: float = Field(20.0, gt=0, description="purchase-rate scale in days")
    a: float = Field(0.8, gt=0, description="BG/NBD: drop-out probability ~ Beta(a, b)")
    b: float = Field(2.5, gt=0)
    s: float = Field(0.8, gt=0, description="Pareto/NBD: drop-out rate ~ Gamma(s, beta)")
    beta: float = Field(250.0, gt=0, description="Pareto/NBD: drop-out rate scale in days")
    p: float = Field(6.0, gt=0, description="Gamma-Gamma shape of order values")
    q: float = Field(4.0, gt=0)
    gamma: float = Field(15.0, gt=0)
    events: bool = True
    growth: float = Field(0.0, description="signups grow (> 0) or shrink (< 0) over the acquisition days: the "
                          "last day's rate is e^growth times the first's")
    peak_month: int | None = Field(None, ge=1, le=12, description="a calendar month when customers buy more")
    peak_boost: float = Field(1.0, gt=0, description="how many times more they buy in peak_month than in the rest "
                              "(the year's purchases stay as many)")


# Shapes real shops have, as changes to the default parameters (the Pareto/NBD process, so that customers can leave
# before a repeat purchase): docs/simulator.md. Each keeps the default mean order value of about 50 unless its point
# is the spend.
SHAPES: dict[str, dict] = {
    "yearly": {"r": 2.0, "alpha": 730.0, "s": 1.0, "beta": 700.0, "days": 1095, "acquisition_days": 730},
    "homogeneous spend": {"q": 1e4, "gamma": 1e4 * 50 / 6},  # customers' mean orders differ by 1 %
    "heavy-tailed spend": {"p": 2.0, "q": 1.8, "gamma": 20.0},  # the mean orders' spread has no variance
    "seasonal": {"peak_month": 11, "peak_boost": 4.0},  # a November four times as busy
    "growing": {"growth": 3.0},  # the last day brings 20x the signups of the first
    "shrinking": {"growth": -3.0},
    "short history": {"days": 200, "acquisition_days": 120},
}


def shop_shape(shape: str, customers: int, seed: int) -> SimulationParams:
    """The parameters of a shop of one of ``SHAPES`` (orders only, every customer a buyer)."""
    return SimulationParams(customers=customers, seed=seed, process="pareto_nbd", events=False, prospect_share=0.0,
                            **SHAPES[shape])


@dataclass
class Simulation:
    """The simulated shop: input tables in our canonical schema plus per-customer ground truth."""

    params: SimulationParams
    transactions: pd.DataFrame
    events: pd.DataFrame
    customers: pd.DataFrame
    truth: pd.DataFrame

    @property
    def end(self) -> pd.Timestamp:
        """The end of the observation window (exclusive)."""
        return pd.Timestamp(self.params.start) + pd.Timedelta(days=self.params.days)

    def write(self, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
        """Write transactions, events, customers and truth (+ truth.json); returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        tables = {"transactions": self.transactions, "customers": self.customers, "truth": self.truth}
        if self.params.events:
            tables["events"] = self.events
        for name, frame in tables.items():
            path = out / f"{name}.{fmt}"
            if fmt == "parquet":
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
            else:
                frame.to_csv(path, index=False)
            paths[name] = path
        meta = self.params.model_dump() | {"end": str(self.end.date()), "rows": {k: len(v) for k, v in tables.items()}}
        (out / "truth.json").write_text(json.dumps(meta, indent=2))
        return paths


def simulate(params: SimulationParams) -> Simulation:
    """Simulate a shop; the same params (seed included) always give the same tables."""
    rng = np.random.default_rng(params.seed)
    n = params.customers
    start = np.datetime64(pd.Timestamp(params.start).to_datetime64(), "ms")

    signup = _signups(rng, n, params.acquisition_days, params.growth)
    buyer = rng.random(n) >= params.prospect_share
    first = signup + rng.exponential(2.0, n)
    buyer &= first < params.days
    lam = rng.gamma(params.r, 1 / params.alpha, n)
    bgnbd = params.process == "bgnbd"
    # BG/NBD: the chance of dropping out after each repeat purchase; Pareto/NBD: the rate per day (mu)
    drop = rng.beta(params.a, params.b, n) if bgnbd else rng.gamma(params.s, 1 / params.beta, n)
    nu = rng.gamma(params.q, 1 / params.gamma, n)
    engagement = lam * params.alpha / params.r

    # Repeat purchases and the dropout time, in the customers' own clock: days, or with a peak month, "shop time",
    # which runs faster in the peak (``_Season``): the processes are the models' exactly in it.
    season = _Season(params, start)
    horizon = np.where(buyer, season.clock(params.days) - season.clock(first), 0.0)
    if bgnbd:
        repeats, tau, died = _bgnbd_purchases(rng, buyer, lam, drop, horizon)
    else:
        tau = rng.exponential(1 / drop)
        died = buyer & (tau < horizon)
        repeats = np.where(buyer, rng.poisson(lam * np.minimum(tau, horizon)), 0)
    owner = np.repeat(np.arange(n), repeats)
    span = np.where(died, tau, horizon)[owner]
    offsets = rng.random(owner.size)
    block_start = np.cumsum(repeats) - repeats
    if bgnbd:
        offsets[block_start[died & (repeats > 0)]] = 1.0  # the dropout purchase itself, at exactly tau
    repeat_time = season.days(season.clock(first[owner]) + offsets * span)
    last = np.zeros(n)  # recency: days from the first purchase to the last
    if owner.size:
        last[repeats > 0] = np.maximum.reduceat(offsets * span, block_start[repeats > 0])
    true_p_alive = _p_alive(params.process, repeats, last, horizon, lam, drop)

    buyers = np.flatnonzero(buyer)
    tx_owner = np.concatenate([buyers, owner])
    tx_time = np.concatenate([first[buyers], repeat_time])
    amount = np.round(rng.gamma(params.p, 1 / nu[tx_owner]), 2)
    order = np.argsort(tx_time, kind="stable")
    tx_owner, tx_time, amount = tx_owner[order], tx_time[order], amount[order]

    ids = np.arange(1, n + 1)
    transactions = pd.DataFrame({
        "order_id": np.arange(1, tx_owner.size + 1),
        "customer_id": ids[tx_owner],
        "timestamp": _at(start, tx_time),
        "amount": amount,
    })

    dropout = np.where(died, first + tau, np.nan)  # only dropouts inside the window have a date
    channel = _channels(rng, engagement)
    cost = np.round(rng.gamma(2.0, _CHANNEL_COST[channel] / 2.0 + 1e-9), 2)
    customers = pd.DataFrame({
        "customer_id": ids,
        "signup_date": _at(start, signup),
        "acquisition_channel": np.array(CHANNELS)[channel],
        "acquisition_cost": cost,
    })
    truth = pd.DataFrame({
        "customer_id": ids,
        "is_buyer": buyer,
        "first_purchase_at": _at(start, np.where(buyer, first, np.nan)),
        "lambda_per_day": lam,
        "dropout_probability" if bgnbd else "dropout_rate_per_day": drop,
        "nu": nu,
        "expected_order_value": params.p / nu,
        "engagement": engagement,
        "repeat_purchases": repeats,
        "dropout_at": _at(start, dropout),
        "alive_at_end": buyer & ~died,
        "p_alive_at_end": np.where(buyer, true_p_alive, np.nan),
    })
    events = _events(rng, params, start, ids, signup, np.where(died, dropout, np.inf), engagement,
                     tx_owner, tx_time, amount)
    return Simulation(params, transactions, events, customers, truth)


def _signups(rng: np.random.Generator, n: int, days: float, growth: float) -> np.ndarray:
    """Signup days on [0, days): uniform, or with density proportional to e^(growth t / days)."""
    u = rng.random(n)
    if growth == 0:
        return u * days
    return days * np.log1p(u * np.expm1(growth)) / growth


class _Season:
    """A shop's clock: purchase intensity ``peak_boost`` times higher in ``peak_month`` than in the other months,
    normalized so that a year holds as much shop time as days. ``clock`` maps days since the start to shop time,
    ``days`` back; without a peak month both are the identity."""

    def __init__(self, params: SimulationParams, start: np.datetime64):
        self.grid = None
        if params.peak_month is None or params.peak_boost == 1:
            return
        dates = pd.date_range(pd.Timestamp(start), periods=params.days + 1, freq="D")
        rate = np.where(dates.month == params.peak_month, params.peak_boost, 1.0)
        year = np.where(np.arange(1, 13) == params.peak_month, params.peak_boost, 1.0) @ _MONTH_DAYS / 365.0
        self.grid = np.arange(params.days + 2, dtype=float)
        self.shop = np.r_[0.0, np.cumsum(rate / year)]

    def clock(self, days: np.ndarray) -> np.ndarray:
        return days if self.grid is None else np.interp(days, self.grid, self.shop)

    def days(self, shop: np.ndarray) -> np.ndarray:
        return shop if self.grid is None else np.interp(shop, self.shop, self.grid)


_MONTH_DAYS = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _bgnbd_purchases(rng: np.random.Generator, buyer, lam, drop_p, horizon):
    """Repeat purchases, dropout time (days after the first purchase) and whether it fell in the window."""
    arrivals = rng.poisson(lam * horizon)
    until_drop = rng.geometric(drop_p)
    died = buyer & (until_drop <= arrivals)
    repeats = np.where(buyer, np.minimum(arrivals, until_drop), 0)
    tau = np.where(
        died,
        horizon * rng.beta(np.maximum(until_drop, 1), np.maximum(arrivals - until_drop + 1, 1)),
        horizon + rng.gamma(np.maximum(until_drop - arrivals, 1), 1 / np.maximum(lam, 1e-300)),
    )
    return repeats, tau, died


def _p_alive(process: str, x, t_x, T, lam, drop) -> np.ndarray:
    """The true P(alive) at the end: given the customer's own rate and drop-out propensity and their
    history (x repeat purchases, the last t_x days after the first, T days watched). The odds of
    being gone are ``p / (1 - p) e^(lambda (T - t_x))`` (BG/NBD, x > 0; 0 without a repeat purchase)
    and ``mu / (lambda + mu) (e^((lambda + mu) (T - t_x)) - 1)`` (Pareto/NBD)."""
    with np.errstate(divide="ignore", over="ignore"):
        if process == "bgnbd":
            log_odds = np.where(x > 0, np.log(drop) - np.log1p(-drop) + lam * (T - t_x), -np.inf)
        else:
            log_odds = np.log(drop) - np.log(lam + drop) + np.log(np.expm1((lam + drop) * (T - t_x)))
    return expit(-log_odds)


def _channels(rng: np.random.Generator, engagement: np.ndarray) -> np.ndarray:
    """Acquisition channel per customer, tilted by engagement (referrals bring engaged customers)."""
    logits = np.log(np.array([0.35, 0.2, 0.15, 0.1, 0.1, 0.1])) + np.outer(
        np.log(np.maximum(engagement, 1e-6)).clip(-3, 3), _CHANNEL_TILT
    )
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    return (rng.random(len(engagement))[:, None] > cdf).sum(axis=1).clip(0, len(CHANNELS) - 1)


def _events(rng, params, start, ids, signup, dropout, engagement, tx_owner, tx_time, amount) -> pd.DataFrame:
    """Engagement events: Poisson streams whose rates scale with engagement while alive."""
    if not params.events:
        return pd.DataFrame({"customer_id": ids[:0], "timestamp": _at(start, np.array([])),
                             "event_type": np.array([], dtype=object), "value": np.array([])})
    end = float(params.days)
    alive_end = np.minimum(dropout, end)
    parts = []

    def stream(kind: str, rate_alive: np.ndarray, rate_dead: np.ndarray, value=None):
        for lo, hi, rate in ((signup, alive_end, rate_alive), (alive_end, np.full_like(signup, end), rate_dead)):
            length = np.maximum(hi - lo, 0.0)
            count = rng.poisson(rate * length)
            owner = np.repeat(np.arange(len(signup)), count)
            times = lo[owner] + rng.random(owner.size) * length[owner]
            parts.append((kind, owner, times, None if value is None else value(owner, times)))

    def per_order(kind: str, probability: float, delay: tuple[float, float], value=None):
        hit = rng.random(tx_owner.size) < probability
        times = tx_time[hit] + rng.uniform(*delay, hit.sum())
        keep = times < end
        parts.append((kind, tx_owner[hit][keep], times[keep], None if value is None else value[hit][keep]))

    # Intensity while alive has a floor (infrequent buyers still browse); after dropout it falls to 3 %.
    alive = 0.3 + 0.7 * engagement
    dead = 0.03 * alive
    monthly = np.full_like(alive, 1 / 30)
    stream("session", 0.05 * alive, 0.05 * dead)
    stream("product_view", 0.10 * alive, 0.10 * dead)
    stream("cart_add", 0.01 * alive, 0.01 * dead)
    stream("email_send", monthly, monthly)
    stream("email_open", monthly * np.clip(0.1 + 0.2 * alive, 0, 0.9), monthly * 0.02)
    stream("email_click", monthly * np.clip(0.02 + 0.05 * alive, 0, 0.5), monthly * 0.002)
    stream("referral", 0.002 * alive, 0.002 * dead)
    stream("nps", monthly / 6, monthly / 12,
           value=lambda owner, times: np.clip(np.round(
               4 + 2 * np.tanh(np.log(alive[owner])) + 3 * (times < dropout[owner])
               + rng.normal(0, 1.5, owner.size)), 0, 10))
    per_order("cart_add", 0.8, (-0.05, -0.001))
    per_order("return", 0.05, (2.0, 20.0), value=amount)
    per_order("review", 0.08, (3.0, 30.0))
    per_order("support_ticket", 0.03, (0.5, 10.0))
    # a satisfaction survey (CSAT, 1-5) after one order in ten: the more engaged, the more satisfied
    satisfaction = np.clip(np.round(3 + 1.5 * np.tanh(np.log(alive[tx_owner])) + rng.normal(0, 1, tx_owner.size)),
                           1, 5)
    per_order("csat", 0.10, (1.0, 7.0), value=satisfaction)

    kinds = np.concatenate([np.full(o.size, k) for k, o, _, _ in parts])
    owners = np.concatenate([o for _, o, _, _ in parts])
    times = np.concatenate([t for _, _, t, _ in parts])
    values = np.concatenate([np.full(o.size, np.nan) if v is None else v for _, o, _, v in parts])
    order = np.argsort(times, kind="stable")
    return pd.DataFrame({"customer_id": ids[owners[order]], "timestamp": _at(start, times[order]),
                         "event_type": kinds[order], "value": values[order]})


def _at(start: np.datetime64, days: np.ndarray) -> np.ndarray:
    """Absolute timestamps (ms) for day offsets from ``start``; NaN offsets become NaT."""
    millis = np.round(np.where(np.isfinite(days), days, 0) * _DAY_MS)
    stamps = start + millis.astype("int64").astype("timedelta64[ms]")
    return np.where(np.isfinite(days), stamps, np.datetime64("NaT"))
