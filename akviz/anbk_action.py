"""The aNBK action at a state (THEORY.md 3.1): one formula for every solver and for their histories, and
the importance samplers' shared estimate of its ``ln Z`` from groups of weights.

    S = -1/2 sum_l Tr(Phi^l hatPhi^l) - sum_l ln Z_l + (gamma0^2 / 2) y^T (Phi^L + I/beta)^-1 y
    Z_l = E_{h ~ N(0, Phi^{l-1})} exp(-1/2 phi(h)^T hatPhi^l phi(h))

At the saddle ``S`` is stationary in ``Phi`` and ``hatPhi``, so a state a Monte Carlo error ``delta`` away from
it carries an action error of order ``delta^2``; the error that counts is that of ``ln Z`` itself.
"""

from __future__ import annotations

import math

import numpy as np


def saddle_action(phis, duals, y, gamma0_sq, inv_beta, log_zs) -> float:
    """``S`` from the kernels ``phis`` and duals ``duals`` (``hatPhi^l``, per layer, ``(P, P)``), the targets ``y``,
    ``gamma0^2``, ``1/beta`` and ``log_zs`` (``ln Z_l`` per layer at that state; NaN where unknown)."""
    p = len(y)
    s = -0.5 * sum(float(np.sum(q * d.T)) for q, d in zip(phis, duals))
    s -= float(sum(log_zs))
    return s + 0.5 * gamma0_sq * float(y @ np.linalg.solve(phis[-1] + inv_beta * np.eye(p), y))


def action_error(log_z_errors) -> float:
    """The action's Monte Carlo standard error: the layers' ``ln Z`` errors (independent samples) in quadrature."""
    return float(np.sqrt(np.sum(np.square(log_z_errors))))


def log_z_from_groups(shift, group_means, offset=0.0):
    """``ln Z`` and its standard error ``se(Z) / Z`` for ``Z = offset + e^shift v``, where ``group_means`` are
    independent estimates of ``v`` (one per group of samples: batch means). ``offset`` is the exactly known part
    of ``Z`` (a control variate's mean). NaN where the estimates overflowed."""
    v = np.asarray(group_means, float)
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
    if not (math.isfinite(shift) and math.isfinite(mean)):
        return float("nan"), float("nan")
    if mean <= 0:  # nothing beyond the known part (offset > 0: a tilt of zero on every sample)
        return (math.log(offset) if offset > 0 else -math.inf), 0.0
    unit = offset * math.exp(-min(max(shift, -700.0), 700.0))  # the offset in units of e^shift
    known = math.log(offset) if offset > 0 else -math.inf
    return float(np.logaddexp(known, shift + math.log(mean))), se / (unit + mean)
