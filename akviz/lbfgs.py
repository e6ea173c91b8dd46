"""Limited-memory BFGS in JAX: a jit-compiled minimiser for large smooth(ish) objectives.

Used by :mod:`akviz.antk` to take a DMFT population that is close to its fixed point the rest of
the way: the depth-1 DMFT is gradient flow on an energy (see ``antk``), so its fixed points are the
energy's stationary points, and a quasi-Newton method reaches them in thousands of iterations where
the flow needs times ``~1/(lambda - gamma0 |J|)`` that diverge near the sparse relu fixed point.

The inverse-Hessian approximation is the textbook one (Nocedal & Wright, section 7.2: ``memory``
pairs ``s_i = x_{i+1} - x_i``, ``y_i = g_{i+1} - g_i``, initial scaling ``gamma = s.y / y.y`` of the
newest pair), applied in its compact form (Byrd, Nocedal & Schnabel 1994; N&W eq. 7.24)

    H g = gamma g + S^T t - gamma Y^T p,   p = R^-1 (S g),   t = R^-T ((D + gamma Y Y^T) p - gamma Y g),

with ``S``, ``Y`` the pairs as rows (oldest first), ``R`` the upper triangle of ``S Y^T`` and ``D``
its diagonal. It gives the same direction as the two-loop recursion (N&W Algorithm 7.4; the tests
check it against one), but reads the pairs in two matrix-vector products instead of ``4 memory``
dependent vector operations: the pairs are the iteration's largest data (2 x 20 vectors as long as
``x``), so this is what sets its speed (default aNTK problem, 216k unknowns: 6.3 ms an iteration
against 8.6 ms for the two-loop recursion, energy and gradient 1.5 ms of it). ``S Y^T`` and ``Y Y^T`` are kept up to date from those same
products: the new pair's column is ``S g_new - S g_old`` (and ``Y g_new - Y g_old``), the first
product of the next iteration minus one of this one (:class:`LBFGSState` ``pending``).

A backtracking Armijo line search (step 1 first, halved up to ``MAX_HALVINGS`` times) takes the step.
Pairs with ``s.y <= 0`` (possible on a non-convex or non-smooth objective) are not stored. All of it
runs in one ``jax.lax.while_loop`` per call, so a call of ``n`` iterations is one compiled program;
call it again with the returned state to continue.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

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
    sy: jnp.ndarray       # (memory, memory) s_i . y_j for i older than j (the rest unused)
    yy: jnp.ndarray       # (memory, memory) y_i . y_j
    pending: jnp.ndarray  # (2, memory) S g, Y g at the previous g (new pair's entries: s.g, y.g)
    has_pending: jnp.ndarray  # the newest pair's column of sy / yy waits for the next S g, Y g
    slot: jnp.ndarray     # next slot to write
    iterations: jnp.ndarray
    evaluations: jnp.ndarray  # calls of value_and_grad (line-search trials included)
    stalled: jnp.ndarray  # True once a line search found no decrease


def init_state(value_and_grad: Callable, x0, args=(), memory: int = 20) -> LBFGSState:
    """Starting state at ``x0`` (one evaluation of ``value_and_grad(x, args)``)."""
    f, g = jax.jit(value_and_grad)(x0, args)
    n = x0.shape[0]
    zeros_m = jnp.zeros((memory,), x0.dtype)
    return LBFGSState(x=x0, f=f, g=g, s=jnp.zeros((memory, n), x0.dtype), y=jnp.zeros((memory, n), x0.dtype),
                      rho=zeros_m, sy=jnp.zeros((memory, memory), x0.dtype),
                      yy=jnp.zeros((memory, memory), x0.dtype), pending=jnp.zeros((2, memory), x0.dtype),
                      has_pending=jnp.asarray(False), slot=jnp.asarray(0), iterations=jnp.asarray(0),
                      evaluations=jnp.asarray(1), stalled=jnp.asarray(False))


def _products(st: LBFGSState):
    """``(S g, Y g)`` (one pass over the pairs) and the state with the newest pair's column filled in."""
    sg = st.s @ st.g
    yg = st.y @ st.g
    k = (st.slot - 1) % st.rho.shape[0]
    col_sy = jnp.where(st.has_pending, sg - st.pending[0], st.sy[:, k])
    col_yy = jnp.where(st.has_pending, yg - st.pending[1], st.yy[:, k])
    st = st._replace(sy=st.sy.at[:, k].set(col_sy), yy=st.yy.at[:, k].set(col_yy).at[k, :].set(col_yy),
                     has_pending=jnp.asarray(False))
    return sg, yg, st


def _direction(st: LBFGSState, sg, yg):
    """``-H g`` by the compact form (module docstring), pairs in age order, empty slots masked."""
    memory = st.rho.shape[0]
    dtype = st.g.dtype
    age = (st.slot + jnp.arange(memory)) % memory          # oldest first
    rho = st.rho[age]
    valid = rho > 0
    both = valid[:, None] & valid[None, :]
    diag = jnp.where(valid, 1.0 / jnp.where(valid, rho, 1.0), 0.0)   # s_i . y_i, exact from the store
    R = jnp.where(both, jnp.triu(st.sy[age][:, age], 1), 0.0) + jnp.diag(jnp.where(valid, diag, 1.0))
    YY = jnp.where(both, st.yy[age][:, age], 0.0)
    a = jnp.where(valid, sg[age], 0.0)
    b = jnp.where(valid, yg[age], 0.0)
    newest = memory - 1
    has_pair = valid[newest]
    # gamma = s.y / y.y; no pair yet: a first step of length 1 / |g| (scale-free start)
    gamma = jnp.where(has_pair, diag[newest] / jnp.where(has_pair, YY[newest, newest], 1.0),
                      1.0 / jnp.maximum(jnp.linalg.norm(st.g), 1e-300))
    p = solve_triangular(R, a, lower=False)
    t = solve_triangular(R, diag * p + gamma * (YY @ p) - gamma * b, trans="T", lower=False)
    coef_s = jnp.zeros(memory, dtype).at[age].set(jnp.where(valid, t, 0.0))
    coef_y = jnp.zeros(memory, dtype).at[age].set(jnp.where(valid, -gamma * p, 0.0))
    return -(gamma * st.g + coef_s @ st.s + coef_y @ st.y)


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
            sg, yg, st = _products(st)
            d = _direction(st, sg, yg)
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
            # S g and Y g at the old g with the new pair in: the next products minus these are its column
            pending = jnp.stack([sg.at[slot].set(jnp.dot(s_vec, st.g)), yg.at[slot].set(jnp.dot(y_vec, st.g))])
            # written in place (a where over the whole (memory, n) ring would copy it every iteration)
            return st._replace(
                x=jnp.where(ok, st.x + s_vec, st.x), f=jnp.where(ok, f_new, st.f), g=jnp.where(ok, g_new, st.g),
                s=st.s.at[slot].set(jnp.where(store, s_vec, st.s[slot])),
                y=st.y.at[slot].set(jnp.where(store, y_vec, st.y[slot])),
                rho=st.rho.at[slot].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0), st.rho[slot])),
                pending=jnp.where(store, pending, st.pending), has_pending=store,
                slot=jnp.where(store, (slot + 1) % st.rho.shape[0], slot),
                iterations=st.iterations + 1, evaluations=st.evaluations + 1 + k, stalled=~ok)

        return jax.lax.while_loop(cond, body, st)

    return jax.jit(run)
