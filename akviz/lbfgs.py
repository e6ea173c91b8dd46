"""Limited-memory BFGS in JAX: a jit-compiled minimiser for large smooth(ish) objectives.

Used by :mod:`akviz.antk` to take a DMFT population that is close to its fixed point the rest of
the way: the depth-1 DMFT is gradient flow on an energy (see ``antk``), so its fixed points are the
energy's stationary points, and a quasi-Newton method reaches them in thousands of iterations where
the flow needs times ``~1/(lambda - gamma0 |J|)`` that diverge near the sparse relu fixed point.

The update is the textbook two-loop recursion (Nocedal & Wright, Algorithm 7.4) with the scaling
``gamma_k = s.y / y.y`` and a backtracking Armijo line search (step 1 first, halved up to
``MAX_HALVINGS`` times). Pairs with ``s.y <= 0`` (possible on a non-convex or non-smooth objective)
are not stored. All of it runs in one ``jax.lax.while_loop`` per call, so a call of ``n``
iterations is one compiled program; call it again with the returned state to continue.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

#: Most halvings of the step in one line search before the iteration gives up (status "stalled").
MAX_HALVINGS = 30
#: Armijo constant: accept a step when ``f(x + t d) <= f(x) + ARMIJO t g.d``.
ARMIJO = 1e-4


class LBFGSState(NamedTuple):
    """The iterate, its value and gradient, and the curvature pairs (a ring of ``memory`` slots)."""

    x: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    s: jnp.ndarray        # (memory, n) steps x_{k+1} - x_k
    y: jnp.ndarray        # (memory, n) gradient changes
    rho: jnp.ndarray      # (memory,) 1 / (s.y), 0 where the slot is empty
    slot: jnp.ndarray     # next slot to write
    iterations: jnp.ndarray
    stalled: jnp.ndarray  # True once a line search found no decrease


def init_state(value_and_grad: Callable, x0, args=(), memory: int = 20) -> LBFGSState:
    """Starting state at ``x0`` (one evaluation of ``value_and_grad(x, args)``)."""
    f, g = jax.jit(value_and_grad)(x0, args)
    n = x0.shape[0]
    return LBFGSState(x=x0, f=f, g=g, s=jnp.zeros((memory, n), x0.dtype), y=jnp.zeros((memory, n), x0.dtype),
                      rho=jnp.zeros((memory,), x0.dtype), slot=jnp.asarray(0), iterations=jnp.asarray(0),
                      stalled=jnp.asarray(False))


def _direction(st: LBFGSState):
    """``-H g`` by the two-loop recursion over the stored pairs, newest first."""
    memory = st.rho.shape[0]

    def back(i, carry):
        q, alpha = carry
        j = (st.slot - 1 - i) % memory
        a = st.rho[j] * jnp.dot(st.s[j], q)
        return q - a * st.y[j], alpha.at[j].set(a)

    q, alpha = jax.lax.fori_loop(0, memory, back, (st.g, jnp.zeros_like(st.rho)))
    newest = (st.slot - 1) % memory
    yy = jnp.dot(st.y[newest], st.y[newest])
    has_pair = st.rho[newest] > 0
    # gamma = s.y / y.y; no pair yet: a first step of length 1 / |g| (scale-free start)
    scale = jnp.where(has_pair, 1.0 / jnp.where(has_pair, st.rho[newest] * yy, 1.0),
                      1.0 / jnp.maximum(jnp.linalg.norm(st.g), 1e-300))
    r = scale * q

    def forward(i, r):
        j = (st.slot - memory + i) % memory
        b = st.rho[j] * jnp.dot(st.y[j], r)
        return r + st.s[j] * (alpha[j] - b)

    return -jax.lax.fori_loop(0, memory, forward, r)


@functools.lru_cache(maxsize=16)
def runner(value_and_grad: Callable):
    """``run(state, n, args)``: up to ``n`` more iterations of minimising ``x -> value_and_grad(x, args)``.

    jit-compiled once per ``value_and_grad`` (cache it: a new function is a new compilation) and array
    shapes; ``n`` is a traced bound, ``args`` a pytree of arrays (the objective's data).
    """

    def run(st: LBFGSState, n, args):
        stop_at = st.iterations + n

        def cond(st):
            return (st.iterations < stop_at) & (~st.stalled)

        def body(st):
            d = _direction(st)
            slope = jnp.dot(st.g, d)
            # not a descent direction (a bad pair on a non-smooth objective): restart from -g
            d = jnp.where(slope < 0, d, -st.g / jnp.maximum(jnp.linalg.norm(st.g), 1e-300))
            slope = jnp.dot(st.g, d)

            def ls_cond(c):
                t, f_new, _, k = c
                return (~(f_new <= st.f + ARMIJO * t * slope)) & (k < MAX_HALVINGS)

            def ls_body(c):
                t, _, _, k = c
                t = 0.5 * t
                f_new, g_new = value_and_grad(st.x + t * d, args)
                return t, jnp.where(jnp.isfinite(f_new), f_new, jnp.inf), g_new, k + 1

            f1, g1 = value_and_grad(st.x + d, args)
            t, f_new, g_new, k = jax.lax.while_loop(
                ls_cond, ls_body, (jnp.asarray(1.0, st.f.dtype), jnp.where(jnp.isfinite(f1), f1, jnp.inf), g1, 0))
            ok = f_new <= st.f + ARMIJO * t * slope
            s_vec, y_vec = t * d, g_new - st.g
            sy = jnp.dot(s_vec, y_vec)
            store = ok & (sy > 1e-12 * jnp.linalg.norm(s_vec) * jnp.linalg.norm(y_vec))
            slot = st.slot
            # written in place (a where over the whole (memory, n) ring would copy it every iteration)
            return LBFGSState(
                x=jnp.where(ok, st.x + s_vec, st.x), f=jnp.where(ok, f_new, st.f), g=jnp.where(ok, g_new, st.g),
                s=st.s.at[slot].set(jnp.where(store, s_vec, st.s[slot])),
                y=st.y.at[slot].set(jnp.where(store, y_vec, st.y[slot])),
                rho=st.rho.at[slot].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0), st.rho[slot])),
                slot=jnp.where(store, (slot + 1) % st.rho.shape[0], slot),
                iterations=st.iterations + 1, stalled=~ok)

        return jax.lax.while_loop(cond, body, st)

    return jax.jit(run)
