"""The aNBK action at a state (THEORY.md 3.1): one formula for every solver and for their histories.

    S = -1/2 sum_l Tr(Phi^l hatPhi^l) - sum_l ln Z_l + (gamma0^2 / 2) y^T (Phi^L + I/beta)^-1 y
    Z_l = E_{h ~ N(0, Phi^{l-1})} exp(-1/2 phi(h)^T hatPhi^l phi(h))

At the saddle ``S`` is stationary in ``Phi`` and ``hatPhi``, so a state a Monte Carlo error ``delta`` away from
it carries an action error of order ``delta^2``; the error that counts is that of ``ln Z`` itself.
"""

from __future__ import annotations

import numpy as np


def saddle_action(phis, duals, y, gamma0_sq, inv_beta, log_zs) -> float:
    """``S`` from the kernels ``phis`` and duals ``duals`` (``hatPhi^l``, per layer, ``(P, P)``), the targets ``y``,
    ``gamma0^2``, ``1/beta`` and ``log_zs`` (``ln Z_l`` per layer at that state; NaN where unknown)."""
    p = len(y)
    s = -0.5 * sum(float(np.sum(q * d.T)) for q, d in zip(phis, duals))
    s -= float(sum(log_zs))
    return s + 0.5 * gamma0_sq * float(y @ np.linalg.solve(phis[-1] + inv_beta * np.eye(p), y))

