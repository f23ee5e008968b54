"""Maximum likelihood for the BTYD models: the optimizer, the parameters' covariance, and their checks.

Each model gives an objective, ``objective(log_params, *columns, weights, penalizer)``: the mean
negative log-likelihood over the weighted distinct rows plus the penalty, with its gradient in the
log-parameters.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from scipy.optimize import minimize

from features.errors import LifecycleError

MIN_REPEAT_BUYERS_TO_FIT = 10  # the least one fit of a purchase or spend model accepts (training asks more)
BOUNDARY = (1e-6, 1e6)  # parameters outside are at the edge of what the data identify
STILL_GRADIENT = 1e-5  # a search stopped early inside BOUNDARY is at the maximum if no gradient entry is larger
_THREADS = min(len(os.sched_getaffinity(0)), 8)
_ROWS_PER_THREAD = 50_000  # below this a thread costs more than it saves


class FitFailed(LifecycleError):
    """A fit that found no usable maximum (no convergence, or Gamma-Gamma's q <= 1): a penalizer may help."""


# An objective of the optimizer: (log-parameters, x, t_x, T, weights, penalizer) -> (value, gradient).
Objective = Callable[..., tuple[float, np.ndarray]]


def maximize_likelihood(model: str, objective: Objective, columns: tuple[np.ndarray, ...], weights: np.ndarray,
                         penalizer: float, size: int, caps: dict[int, float] | None = None) -> list[float]:
    """BFGS from log-parameters 0.1 to a tolerance of 1e-7, as lifetimes fits; the parameters, exponentiated.

    ``caps`` (parameter index -> largest value): a search that goes beyond one is stopped and finished by
    L-BFGS-B with the parameter bounded there (where the likelihood only flattens and each step costs more).

    ``objective(log_params, *columns, weights, penalizer)`` is -sum(w ll) / sum(w) + penalty with its
    gradient. Large inputs are split into chunks evaluated in parallel threads (numpy and scipy
    release the GIL): the objective is exactly the mean of the chunks' objectives weighted by their
    share of the weights. No Hessian afterwards (lifetimes computes one for standard errors the
    service does not use; on large data it costs as much as the search).
    """
    pieces = max(1, min(_THREADS, len(weights) // _ROWS_PER_THREAD))
    chunks = list(zip(*(np.array_split(c, pieces) for c in (*columns, weights)), strict=True))
    shares = [chunk[-1].sum() / weights.sum() for chunk in chunks]

    def part(log_params: np.ndarray, chunk: tuple, share: float):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # the search probes extreme values
            value, gradient = objective(log_params, *chunk, penalizer)
        return share * value, share * gradient

    with ThreadPoolExecutor(pieces) as pool:
        def total(log_params: np.ndarray):
            if pieces == 1:
                return part(log_params, chunks[0], shares[0])
            values, gradients = zip(*pool.map(partial(part, log_params), chunks, shares), strict=True)
            return sum(values), sum(gradients)

        limit = np.full(size, np.inf)
        for index, most in (caps or {}).items():
            limit[index] = np.log(most)

        def beyond_a_cap(intermediate_result) -> None:
            if (intermediate_result.x > limit).any():
                raise StopIteration

        result = minimize(total, jac=True, x0=np.full(size, 0.1), tol=1e-7, callback=beyond_a_cap if caps else None)
        if (result.x > limit).any():  # on to the maximum with the capped parameters held at most at their caps
            result = minimize(total, jac=True, x0=np.minimum(result.x, limit), method="L-BFGS-B", tol=1e-10,
                              bounds=[(None, None if np.isinf(top) else top) for top in limit])
    # BFGS also stops on "precision loss" when its line search cannot improve on rounding noise: at the
    # maximum if the gradient is that small too (scipy 1.17 stops so on a Gamma-Gamma fit at 2e-7), unless
    # the parameters are drifting off to an edge, where the likelihood flattens out (a penalizer helps).
    inside = np.all((BOUNDARY[0] < np.exp(result.x)) & (np.exp(result.x) < BOUNDARY[1]))
    if not (result.success or (np.abs(result.jac).max() < STILL_GRADIENT and inside)):
        raise FitFailed(f"{model} did not converge: {result.message}")
    return [float(v) for v in np.exp(result.x)]


def log_parameter_covariance(objective: Objective, columns: tuple[np.ndarray, ...], weights: np.ndarray,
                              penalizer: float, point: np.ndarray) -> np.ndarray:
    """H^-1, H the Hessian of the total negative log-likelihood in log-parameters at the maximum ``point``
    (central differences of the objective's gradient; see ``maximize_likelihood``). Directions the data do
    not identify (eigenvalues ~0) get a large but finite variance."""
    step = 1e-4

    def gradient(at: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return objective(at, *columns, weights, penalizer)[1]

    hessian = np.column_stack([(gradient(point + h) - gradient(point - h)) / (2 * step)
                               for h in step * np.eye(len(point))]) * weights.sum()
    values, vectors = np.linalg.eigh((hessian + hessian.T) / 2)
    return (vectors / np.maximum(values, 1e-9 * values.max())) @ vectors.T


def warn_at_boundary(model: str, params: dict[str, float]) -> None:
    """Warn of the parameters outside ``BOUNDARY``: read as about 0 or very large, not as estimates."""
    low, high = BOUNDARY
    edges = {k: v for k, v in params.items() if not low < v < high}
    if edges:
        shown = ", ".join(f"{k} ({v:.3g})" for k, v in edges.items())
        warnings.warn(f"{model}: {shown} at the edge of what the data identify (read as about 0 or very large, "
                      "not as estimates)", stacklevel=3)
