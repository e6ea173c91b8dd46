"""aNBK saddle point by persistent MALA chains and stochastic approximation (THEORY.md 3.1, 3.4).

The saddle equations ``Phi^l = <phi phi^T>_l`` are solved as the fixed point
of a noisy map, the way THEORY.md 3.4 found to work for the relu tilt at
``gamma0 = O(1)``:

* one population of ``S`` persistent chains per layer, in whitened
  coordinates ``h = u R_l`` (``R_l`` the symmetric square root of
  ``Phi^{l-1}``, ``Phi^0 = C``), target
  ``log p(u) = -|u|^2/2 + phi(h)^T M_l phi(h) / 2`` with ``M_l = -hatPhi^l``:
  ``M_L = gamma0^2 a a^T``, ``a = (Phi^L + I/beta)^-1 y``, and
  ``M_l = R_{l+1}^+ (<u u^T>_{l+1} - I) R_{l+1}^+`` below it;
* a *round* is ``n_inner`` MALA steps of every chain (step size adapted to
  acceptance 0.6), then a Robbins-Monro update
  ``Phi^l <- Phi^l + eta (<phi phi^T>_chains - Phi^l)`` (and the same for the
  running ``<u u^T>`` of the inner duals); the last layer's chains draw the
  Hubbard-Stratonovich field ``xi`` exactly at each step, inner layers get an
  exact radial move (relu);
* phases: *relax* (constant ``eta``, ``gamma0`` ramped up from the start),
  *average* (``eta`` decreasing as ``1/t``, the state set to the Polyak
  average of the chain estimates), then *evaluate*: the state frozen, fresh
  rounds estimate ``<phi phi^T>`` at it. The saddle residual
  ``||Phi - <phi phi^T>|| / ||Phi||`` and its Monte Carlo standard error
  (batch means over independent chain groups) come from this phase only,
  never from the samples that produced the state. A further pass averages
  longer, continuing the same Polyak average, and evaluates again.
* the test-point kernels (THEORY.md 3.2) and the preactivation samples use
  chain snapshots of the averaging phases, not of the evaluation: there the
  kernels move with the chains, and a chain far out along the task direction
  grows ``Phi``, which shrinks the tilt and pulls it back, so such
  fluctuations largely cancel (as in the Polyak state). At ``gamma0 = 1``
  (digits 3-vs-8, P = 100, relu, 3 passes) the train+test kernels of two
  seeds then differ by 1.1% and 1.7% (relative Frobenius; ``beta`` = 1 and
  10) instead of 4.8% and 11.5%, their test predictions by 0.0065 and 0.013
  RMS instead of 0.013 and 0.015. ``mc_error`` stays the evaluation's: an
  upper bound for those kernels.
* the action's ``ln Z_l`` at the final state comes from stepping stones
  (``log_normalisers``): the evaluation's chains walk the tilt's strength
  down to the prior, and the product of the averages of
  ``exp(dt phi^T M phi / 2)`` between neighbouring strengths is ``Z_l``.

Why this and not a deterministic fixed-point map: for relu the tilt
``exp(+gamma0^2 (a . phi)^2 / 2)`` is normalisable only while
``gamma0^2 sup_u (a . relu(R u))^2 / |u|^2 < 1``. The saddle sits close to
that edge at ``gamma0 = O(1)``: a few chains travel far out along the task
direction, which grows ``Phi`` there and shrinks ``a`` until the tilt
normalises. Chains and kernels moving together follow that feedback; a
map that evaluates the tilt at a fixed ``a`` (as importance sampling does)
sees a non-normalisable density on the way and fails. Checked against
Langevin-sampled networks (digits 3-vs-8, P = 100, relu, depth 1): see
docs/anbk.md for the figures.

The limit of this solver is that edge itself. At ``gamma0 >= 1`` on digits
the marginal of the Hubbard-Stratonovich field has an exponential tail
(``E_xi[gamma0 a . phi] ~ xi + 0.6`` for ``xi << 0``, at ``beta = 1``): chains
out there are slow to come back, the effective sample fraction is ~1% and the
kernel's standard error ~5% at 2048 chains. And the map ``Phi -> <phi phi^T>``
is steep along the task direction: ``benchmarks/anbk_edge.py`` measured a
slope of -30 to -70 (relative units) at ``gamma0 = 1``, ``beta = 1``, with the
saddle on that line 0.3-0.5% from the Polyak state, whose residual at
equilibrium is ~0.1 (two independent estimators). A residual below 1e-2
would need the state within ~1e-4 of the saddle, far below its Monte Carlo
precision (two seeds: 0.6%). The result then says ``converged=False`` with
both figures. Tried and measured here without a gain: Hamiltonian
trajectories (8 leapfrog steps) for the last layer (ESS 1.3%);
a stratified xi grid with thermodynamic integration for ``log Z(xi)`` as the
solver's map (1% error and converged at ``gamma0 = 0.5``, but at
``gamma0 = 1`` the grid weights of the heavy xi tail amplify small biases and
the iteration diverged; it serves as an independent check in the benchmark);
Stein control variates (the score, and its quadratic terms along the top
directions) in the evaluation (standard error 6.1% -> 4.4% at best); smaller
Robbins-Monro steps (``eta0 = 0.05``: the chains run away during the ramp); the radius
integrated in closed form (relu is homogeneous: the direction's density is ``∝ (1 -
s^2)^-(k+2)/2``, and ``Phi`` a ratio of bounded averages) with exact Newton solves of the
reweighted sample average (``benchmarks/anbk_sphere.py``): at ``gamma0 = 0.5`` the residual
equals the Monte Carlo error (2-5% at 2048 chains x 64 steps, 0.7-1.3 s an iteration), but at
``gamma0 = 1`` it stays 0.44-0.60 with a 3% error, because at a fixed tilt the chains take
thousands of steps to settle (the share of chains with ``s^2 > 0.8`` fell from 3.9% to 0.1% over
7680 steps, ``tr Phi`` from 72 to 58).

A chain state that is non-finite or beyond ``|u|^2 > ESCAPE`` means the
tilted density does not normalise for this ``gamma0`` and ``beta``: the
result is not converged and says so.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .anbk_action import action_error, saddle_action
from .regression import alignment

#: Independent chain groups for batch-means standard errors.
GROUPS = 16
#: Rounds between chain snapshots (the samples of the test-point kernels and preactivation densities).
SNAP_EVERY = 6
#: Chain snapshots of the averaging phases kept for the test-point kernels (evenly thinned beyond it).
POOL_SNAPSHOTS = 64
#: |u|^2 beyond which a chain has run away (the prior's tail is at |u|^2 ~ P).
ESCAPE = 1e8
#: A final saddle residual above this is no saddle at all (reported as failure, kernels NaN).
NO_SADDLE = 0.5
#: Relative eigenvalue cutoff of the square roots of the input kernel ``C`` (exact, float64; singular when P > D).
EIG_CUTOFF = 1e-11
#: The same for a layer kernel ``Phi^l`` estimated by Monte Carlo (the prior of layer ``l + 1``): its null directions
#: (``Phi^l`` is singular where ``C`` is, for the linear network) carry rounding noise, +-3e-9 relative from the
#: float32 chains (linear, depth 2, rank-8 inputs, P = 40). ``EIG_CUTOFF`` kept those eigenvalues and inverted them:
#: tilts ``M_1`` with entries ~1e6 where the exact saddle's are 0.015, and MALA failed there (NaN kernels, or a
#: residual of 0.13 after 3 evaluations; with this cutoff it converged in 2, within its error of the exact
#: kernels). Non-linear kernels on digits 3-vs-8 (NNGP, relu / tanh / erf / gelu) have their smallest eigenvalue at
#: 6e-4 to 1.4e-3 of the largest, far above it.
KERNEL_EIG_CUTOFF = 1e-6
#: Activations with phi(c h) = c phi(h) for c > 0 (exact radial Gibbs move).
HOMOGENEOUS = ("relu", "linear")
#: Precision of the chains (kernel sums and the state are float64).
CHAIN_DTYPE = jnp.float32
#: ``ln Z_l`` at the final state by stepping stones (``log_normalisers``): the tilt's strength ``t`` on
#: ``STONES`` equal steps from 0 (the prior, drawn exactly) to 1; at each ``t > 0``, ``STONE_BURN`` rounds of MALA
#: on the chains coming down from ``t = 1`` (the state's own), then ``STONE_ROUNDS`` rounds that sample it, on at
#: most ``STONE_CHAINS`` chains a layer.
STONES = 8
STONE_BURN = 8
STONE_ROUNDS = 16
STONE_CHAINS = 2048
#: A stone whose weights ``exp(dt phi^T M phi / 2)`` have an effective sample fraction below this gives no ``ln Z``
#: (NaN): at ``gamma0 = 1`` (digits 3-vs-8, ``beta = 1``, depth 1, 2048 chains), where the mean-field tail slope
#: at MALA's state is 1.006 (the density does not normalise), the last stone's fraction was 0.04% (its factor
#: ``e^4.4``, against ``e^0.06-0.16`` and 93-99% below it); at 0.5 the eight stones had 90-99.5%.
STONE_ESS = 0.05


def prior_cutoff(l):
    """The eigenvalue cutoff for the prior of layer ``l + 1`` (``l`` from 0): ``C``'s at ``l = 0``, a Monte Carlo
    layer kernel's above."""
    return EIG_CUTOFF if l == 0 else KERNEL_EIG_CUTOFF


def sym_sqrt_pinv(k, cutoff=EIG_CUTOFF):
    """Symmetric ``K^{1/2}`` and its pseudo-inverse (eigenvalues below ``cutoff`` times the largest dropped): the
    default for the exact input kernel, ``KERNEL_EIG_CUTOFF`` for a Monte Carlo layer kernel."""
    k = 0.5 * (k + k.T)
    lam, vec = jnp.linalg.eigh(k)
    keep = lam > cutoff * jnp.maximum(lam[-1], 1e-300)
    s = jnp.sqrt(jnp.where(keep, lam, 0.0))
    sinv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    return (vec * s) @ vec.T, (vec * sinv) @ vec.T


def _lowbias32(x):
    """A bijective 32-bit integer hash with strong avalanche (C. Wellons' "lowbias32")."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def proposal_noise(key, shape, dtype=CHAIN_DTYPE):
    """Standard normal draws of ``shape`` from a counter-based hash seeded by ``key``.

    Why not ``jax.random.normal``: threefry costs ~7 ns a number on the CPU, which made it two
    thirds of a MALA round (2048 chains x 100 points); hashing a counter costs a third to a half.
    Two 32-bit seed words come from ``key`` (threefry), so every call draws a fresh stream;
    within a call the hash is a bijection of distinct counters. Uniforms with 23 bits, mapped
    through the inverse error function: with 24, ``2^24 - 0.5`` rounds to ``2^24`` in float32,
    so one draw in 2^24 was ``u = 1`` and an infinite normal. Its moments, tail, finiteness and
    independence across calls are tested (tests/test_anbk.py).
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    count = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _lowbias32(_lowbias32(count ^ seed[0]) + seed[1])
    u = ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))  # exact in float32: in (0, 1), never 0 or 1
    return (math.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)).astype(dtype)


def _mala_fn(phi, dphi, n_inner: int, homogeneous: bool):
    """``mala(u, eps, r, m, last, key, adapt)``: ``n_inner`` MALA steps of one layer's chains (traceable, not
    jitted: the round programs and ``_stones_fn`` compile it into theirs).

    ``homogeneous``: ``phi(c h) = c phi(h)`` for ``c > 0`` (relu, linear): adds the exact radial move.
    """

    def tilt(u, r, m):
        """Inner layer: log target ``-|u|^2/2 + phi^T M phi / 2`` (``m = M``) and its gradient."""
        h = u @ r
        f = phi(h)
        back = f @ m
        grad = -u + (dphi(h) * back) @ r  # r symmetric
        return -0.5 * jnp.sum(u * u, axis=-1) + 0.5 * jnp.sum(f * back, axis=-1), grad

    def readout(u, r, m):
        """Last layer (``m = gamma0 a``): ``f = phi(h)`` and ``v = (phi'(h) m) R`` at ``u``.

        Given the Hubbard-Stratonovich field ``xi`` the log target is ``-|u|^2/2 + xi (m . f)``
        with gradient ``-u + xi v`` (its average over ``xi ~ N(0, 1)`` is the rank-one tilt
        ``exp(gamma0^2 (a . phi)^2 / 2)``): a step that redraws ``xi`` needs no new matrix products.
        """
        h = u @ r
        return phi(h), (dphi(h) * m[None, :]) @ r

    def radial(u, lp, gr, k):
        """Exact Gibbs move of the radius ``|u|`` given the direction (positively homogeneous ``phi``).

        ``log p(r u_hat) = -(1 - T) r^2 / 2`` with ``T = phi^T M phi / |u|^2`` fixed along the ray, so
        ``r^2 (1 - T) ~ chi^2_P``. Where ``T >= 1`` the ray does not normalise: the chain is left where
        it is (and will run away: reported).
        """
        u2 = jnp.sum(u * u, axis=-1)
        t = 1.0 + 2.0 * (lp / u2)  # lp = -(1 - T) |u|^2 / 2
        chi2 = 2.0 * jax.random.gamma(k, u.shape[-1] / 2.0, lp.shape, u.dtype)
        ok = t < 1.0
        scale = jnp.where(ok, jnp.sqrt(chi2 / jnp.where(ok, (1.0 - t) * u2, 1.0)), 1.0)
        return u * scale[:, None], lp * scale**2, gr * scale[:, None]

    def accept(u, prop, lp, lp2, gr, gr2, eps, k):
        """Metropolis-Hastings test of the MALA proposals: which chains move."""
        fwd = jnp.sum((prop - u - eps * gr) ** 2, axis=-1)
        bwd = jnp.sum((u - prop - eps * gr2) ** 2, axis=-1)
        log_alpha = lp2 - lp + (fwd - bwd) / (4.0 * eps)
        return (jnp.log(jax.random.uniform(k, lp.shape, u.dtype)) < log_alpha) & jnp.isfinite(lp2)

    def adapted(eps, rate, adapt):
        return jnp.where(adapt, jnp.clip(eps * jnp.exp(0.3 * (rate - 0.6)), 1e-5, 4.0), eps).astype(eps.dtype)

    def mala(u, eps, r, m, last, key, adapt):
        """``n_inner`` MALA steps of all chains of one layer; step size adapted to acceptance 0.6.

        Returns the chains, the step size, the acceptance rate and ``phi(h)`` at the chains.
        The log target and gradient of the current chains are carried from step to step (one
        evaluation per step, at the proposal).

        Last layer: each step first draws ``xi | u ~ N(gamma0 a . phi(h), 1)`` exactly, then moves
        ``u | xi`` (a linear tilt: well conditioned). The far excursions along the task direction
        that the rank-one tilt causes near the edge of normalisability become an AR(1) walk of
        ``xi`` instead of rare jumps of a few chains (measured: 5-30x more effective samples).
        """
        noise = lambda k: proposal_noise(k, u.shape, u.dtype)  # noqa: E731
        if last:
            def step(carry, k):
                u, eps, f, v = carry
                k1, k2, k3 = jax.random.split(k, 3)
                s = f @ m
                xi = s + jax.random.normal(k3, s.shape, u.dtype)
                lp, gr = -0.5 * jnp.sum(u * u, axis=-1) + xi * s, -u + xi[:, None] * v
                prop = u + eps * gr + jnp.sqrt(2.0 * eps) * noise(k1)
                f2, v2 = readout(prop, r, m)
                lp2, gr2 = -0.5 * jnp.sum(prop * prop, axis=-1) + xi * (f2 @ m), -prop + xi[:, None] * v2
                ok = accept(u, prop, lp, lp2, gr, gr2, eps, k2)[:, None]
                rate = jnp.mean(ok)
                return (jnp.where(ok, prop, u), adapted(eps, rate, adapt), jnp.where(ok, f2, f),
                        jnp.where(ok, v2, v)), rate

            (u, eps, f, _), rates = jax.lax.scan(step, (u, eps) + readout(u, r, m), jax.random.split(key, n_inner))
            return u, eps, jnp.mean(rates), f

        def step(carry, k):
            u, eps, lp, gr = carry
            k1, k2, k3 = jax.random.split(k, 3)
            if homogeneous:
                u, lp, gr = radial(u, lp, gr, k3)
            prop = u + eps * gr + jnp.sqrt(2.0 * eps) * noise(k1)
            lp2, gr2 = tilt(prop, r, m)
            ok = accept(u, prop, lp, lp2, gr, gr2, eps, k2)
            rate = jnp.mean(ok)
            return (jnp.where(ok[:, None], prop, u), adapted(eps, rate, adapt), jnp.where(ok, lp2, lp),
                    jnp.where(ok[:, None], gr2, gr)), rate

        (u, eps, _, _), rates = jax.lax.scan(step, (u, eps) + tilt(u, r, m), jax.random.split(key, n_inner))
        return u, eps, jnp.mean(rates), phi(u @ r)

    return mala


@functools.lru_cache(maxsize=None)
def mcmc_functions(phi, dphi, depth: int, n_inner: int, homogeneous: bool):
    """The jitted round program for one activation, depth and MALA steps per round (``homogeneous``: see
    ``_mala_fn``)."""
    mala = _mala_fn(phi, dphi, n_inner, homogeneous)

    def duals(phis, suu, r1, y, g, inv_beta):
        """Square roots per layer and the tilts ``M_l`` (last: the vector ``g a``) at a state."""
        p = y.shape[0]
        roots = [(r1, None)] + [sym_sqrt_pinv(phis[l], KERNEL_EIG_CUTOFF) for l in range(depth - 1)]
        a = jnp.linalg.solve(phis[-1] + inv_beta * jnp.eye(p), y)
        ms = []
        for l in range(depth - 1):
            rinv = roots[l + 1][1]
            m = rinv @ (suu[l + 1] - jnp.eye(p)) @ rinv
            ms.append(0.5 * (m + m.T))
        ms.append(g * a)
        return [q[0] for q in roots], ms

    def rounds(state, consts, keys, etas, gs, adapt, average, snap_every, moments):
        """``len(keys)`` rounds; returns the new state and per-round diagnostics.

        state: dict(u (L,S,P), eps (L,), phis (L,P,P), suu (L,P,P));
        consts: dict(r1, y, inv_beta); ``etas``, ``gs``: Robbins-Monro step and gamma0 per round.
        ``average``: accumulate Polyak sums (and chain-group sums) of the chain estimates.
        ``moments`` (static; the evaluate phase): also the second moments behind the effective
        sample fraction. Returns one chain snapshot every ``snap_every`` rounds as well (empty ones in the
        evaluate phase).
        """
        r1, y, inv_beta = consts["r1"], consts["y"], consts["inv_beta"]
        s, p = state["u"].shape[1], y.shape[0]
        groups = GROUPS

        def one(carry, inp):
            st, acc = carry
            key, eta, g = inp
            rs, ms = duals(st["phis"], st["suu"], r1, y, g, inv_beta)
            # chains in float32: their Monte Carlo error (~1e-2) dwarfs rounding; sums are float64
            rs, ms = [q.astype(CHAIN_DTYPE) for q in rs], [q.astype(CHAIN_DTYPE) for q in ms]
            us, epss, rates, ests, uus, grp, sq = [], [], [], [], [], [], []
            for l, k in enumerate(jax.random.split(key, depth)):
                u, e, rate, f = mala(st["u"][l], st["eps"][l], rs[l], ms[l], l == depth - 1, k, adapt)
                fg = f.reshape(groups, s // groups, p)
                gk = jnp.einsum("gsi,gsj->gij", fg, fg).astype(jnp.float64) / (s // groups)
                us.append(u), epss.append(e), rates.append(rate), grp.append(gk)
                ests.append(jnp.mean(gk, axis=0))
                uus.append((u.T @ u).astype(jnp.float64) / s)
                if moments:  # second moments only where they are used: the evaluate phase's sample sizes
                    sq.append(jnp.einsum("si,sj->ij", f * f, f * f).astype(jnp.float64) / s)
            est, uu = jnp.stack(ests), jnp.stack(uus)
            new = {"u": jnp.stack(us), "eps": jnp.stack(epss),
                   "phis": st["phis"] + eta * (est - st["phis"]),
                   "suu": st["suu"] + eta * (uu - st["suu"])}
            w = jnp.where(average, 1.0, 0.0)
            acc = {"n": acc["n"] + w, "phi": acc["phi"] + w * est, "uu": acc["uu"] + w * uu,
                   "grp": acc["grp"] + w * jnp.stack(grp),
                   "sq": acc["sq"] + w * jnp.stack(sq) if moments else acc["sq"]}
            u2 = jnp.max(jnp.sum(new["u"] ** 2, axis=-1), axis=-1)
            diag = {"rate": jnp.stack(rates), "u2max": u2,
                    "change": jnp.linalg.norm((est - st["phis"]).reshape(depth, -1), axis=-1)
                    / jnp.linalg.norm(st["phis"].reshape(depth, -1), axis=-1)}
            return (new, acc), diag

        def block(carry, inp):  # snap_every rounds, then one snapshot of the chains
            carry, diag = jax.lax.scan(one, carry, inp)
            # the evaluate phase (moments) keeps no snapshots: its samples only measure the frozen state
            return carry, (diag, carry[0]["u"][..., :0] if moments else carry[0]["u"])

        zeros = jnp.zeros((depth, p, p))
        acc0 = {"n": 0.0, "phi": zeros, "uu": zeros, "grp": jnp.zeros((depth, groups, p, p)), "sq": zeros}
        n_blocks = keys.shape[0] // snap_every
        inp = (keys.reshape(n_blocks, snap_every, -1), etas.reshape(n_blocks, snap_every),
               gs.reshape(n_blocks, snap_every))
        (state, acc), (diag, snaps) = jax.lax.scan(block, (state, acc0), inp)
        diag = {k: v.reshape((-1,) + v.shape[2:]) for k, v in diag.items()}
        return state, acc, diag, snaps

    return jax.jit(rounds, static_argnums=(7, 8))


@functools.lru_cache(maxsize=None)
def _stones_fn(phi, dphi, n_inner: int, homogeneous: bool, last: bool):
    """The jitted stepping-stone program of one layer kind (``last``: the rank-one readout tilt)."""
    mala = _mala_fn(phi, dphi, n_inner, homogeneous)

    def energy(f, m):
        """``phi^T M phi / 2`` per chain; last layer (``m = gamma0 a``): ``(m . phi)^2 / 2``."""
        return 0.5 * (f @ m) ** 2 if last else 0.5 * jnp.sum(f * (f @ m), axis=-1)

    def weights(x):
        """Per chain group, ``log sum exp(x)`` and ``log sum exp(2 x)`` (the stone's ESS)."""
        x = x.astype(jnp.float64).reshape(GROUPS, -1)
        return jax.nn.logsumexp(x, axis=1), jax.nn.logsumexp(2 * x, axis=1)

    @jax.jit
    def stones(u, eps, r, m, key):
        """Per stone ``k`` (``t_k = k / STONES``) and chain group: ``log sum exp(dt V)`` and ``log sum exp(2 dt V)``
        over the group's samples of the density tilted by ``t_k`` (``dt = 1 / STONES``, ``V = energy``), and the
        largest ``|u|^2`` the chains reached. Stones from ``t = 1 - dt`` down to ``dt`` run the chains ``u`` (drawn
        at ``t = 1``) downwards; stone 0 draws the prior exactly."""
        dt = 1.0 / STONES

        def strength(t):  # the tilt at t: t M, or sqrt(t) gamma0 a for the readout's square
            return jnp.sqrt(t) * m if last else t * m

        def sample(carry, k):
            u, eps = carry
            mt = strength(k * dt).astype(u.dtype)

            def one(c, inp):
                u, eps = c
                key, adapt = inp
                u, eps, _, f = mala(u, eps, r, mt, last, key, adapt)
                return (u, eps), weights(dt * energy(f, m))
            keys = jax.random.split(jax.random.fold_in(key, k), STONE_BURN + STONE_ROUNDS)
            adapt = jnp.arange(STONE_BURN + STONE_ROUNDS) < STONE_BURN
            (u, eps), lse = jax.lax.scan(one, (u, eps), (keys, adapt))
            lse = jax.tree_util.tree_map(lambda x: jax.nn.logsumexp(x[STONE_BURN:], axis=0), lse)
            return (u, eps), (lse, jnp.max(jnp.sum(u * u, axis=-1)))

        _, (upper, u2max) = jax.lax.scan(sample, (u, eps), jnp.arange(STONES - 1, 0, -1))

        def prior(_, key):
            f = phi(jax.random.normal(key, u.shape, u.dtype) @ r)
            return None, weights(dt * energy(f, m))
        _, lse0 = jax.lax.scan(prior, None, jax.random.split(jax.random.fold_in(key, 0), STONE_ROUNDS))
        lse0 = jax.tree_util.tree_map(lambda x: jax.nn.logsumexp(x, axis=0)[None], lse0)
        lse, lse_sq = (jnp.concatenate([a, b[::-1]]) for a, b in zip(lse0, upper))
        return lse, lse_sq, jnp.max(u2max)
    return stones


def log_normalisers(act, c, phis, ms, u, eps, y, g, beta, seed, n_inner=4):
    """``ln Z_l`` of every layer at the state ``phis`` (tilts ``ms``: ``M_l = -hatPhi^l``) by stepping stones, and
    their Monte Carlo standard errors.

    ``Z_l(1) / Z_l(0) = prod_k E_{t_k}[exp((t_{k+1} - t_k) phi^T M_l phi / 2)]`` over ``t_k = k / STONES``, each
    factor an average over the density tilted by ``t_k`` (``Z_l(0) = 1``): unbiased factors, no quadrature. The
    chains ``u`` (the state's, sampling ``t = 1``) walk down the stones; the errors are batch means over
    ``GROUPS`` independent chain groups (each group's own product). NaN where a factor overflows or the chains
    run away (``|u|^2 > ESCAPE``): the tilted density does not normalise at the state. The chains must sample
    the state's own tilted density: ``solve`` calls it on the chains of a final evaluation its checks passed
    (from a state that does not normalise, chains that have not yet run far give a meaningless number)."""
    p = len(y)
    a = np.linalg.solve(np.asarray(phis[-1]) + np.eye(p) / beta, np.asarray(y, float))
    priors = [np.asarray(c)] + [np.asarray(q) for q in phis[:-1]]
    depth = len(phis)
    chains = max(GROUPS, min(STONE_CHAINS, u.shape[1]) // GROUPS * GROUPS)
    key = jax.random.PRNGKey(int(seed) + 7919)
    log_z, errors = [], []
    for l in range(depth):
        last = l == depth - 1
        r = np.asarray(sym_sqrt_pinv(jnp.asarray(priors[l]), prior_cutoff(l))[0])
        m = g * a if last else np.asarray(ms[l])
        fn = _stones_fn(act.fn, act.deriv, n_inner, act.name in HOMOGENEOUS, last)
        lse, lse_sq, u2max = fn(jnp.asarray(u[l][:chains], CHAIN_DTYPE), jnp.asarray(eps[l], CHAIN_DTYPE),
                                jnp.asarray(r, CHAIN_DTYPE), jnp.asarray(m), jax.random.fold_in(key, l))
        lse, lse_sq = np.asarray(lse), np.asarray(lse_sq)
        per_group = chains // GROUPS * STONE_ROUNDS  # samples behind each group's average
        # per stone, pooled over the groups: log sum exp(dt V) and log sum exp(2 dt V)
        total, total_sq = np.logaddexp.reduce(lse, axis=1), np.logaddexp.reduce(lse_sq, axis=1)
        # the pooled averages for the value; each group's own product for the spread
        value = float(np.sum(total - math.log(per_group * GROUPS)))
        groups = np.sum(lse - math.log(per_group), axis=0)
        # each stone's effective sample fraction: a few samples carrying a stone's average means its tilt
        # reaches into a tail the chains do not sample (near t = 1: the density at the state does not normalise)
        ess = float(np.min(np.exp(2 * total - total_sq))) / (per_group * GROUPS)
        # chains that ran away: the tilted density does not normalise at the state (and ln Z is infinite)
        ok = math.isfinite(value) and np.isfinite(groups).all() and float(u2max) < ESCAPE and ess >= STONE_ESS
        log_z.append(value if ok else float("nan"))
        errors.append(float(groups.std(ddof=1) / math.sqrt(GROUPS)) if ok else float("nan"))
    return log_z, errors


def relative_difference(a, b):
    """``||a - b|| / ||b||`` (Frobenius; absolute when ``b = 0``): the saddle residuals of every aNBK solver."""
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a - b))


def solve(act, c, y, g, beta, depth, chains, seed, tol, max_iter, init_state, callback, start, g_from=0.0,
          n_inner=4, rounds=None, snap_every=SNAP_EVERY, eta0=0.2):
    """Solve the saddle at ``gamma0 = g``; returns a dict for :func:`akviz.anbk` (see the module docstring).

    ``init_state``: the ``state`` of a previous solve on the same problem and depth (warm start: its
    chains and kernels), or a dict with ``phis`` only (kernels to start from, chains from the prior).
    ``max_iter``: passes (average, then evaluate); after one that misses ``tol`` the next averages
    twice as long (up to 4x), continuing the same Robbins-Monro steps and Polyak average.
    ``rounds``: rounds of the first averaging phase and of each evaluation (default 96 cold, 48 warm;
    evaluation 96); relaxing takes as many cold, half as many warm.
    """
    y = np.asarray(y, float)
    p = y.shape[0]
    chains = max(GROUPS, chains // GROUPS * GROUPS)
    fn = mcmc_functions(act.fn, act.deriv, depth, n_inner, act.name in HOMOGENEOUS)
    r1 = np.asarray(sym_sqrt_pinv(jnp.asarray(c))[0])
    consts = {"r1": jnp.asarray(r1), "y": jnp.asarray(y), "inv_beta": 1.0 / beta}
    key = jax.random.PRNGKey(int(seed))
    warm = init_state is not None and init_state.get("u") is not None \
        and np.shape(init_state["u"]) == (depth, chains, p)
    if warm:
        u, eps = jnp.asarray(init_state["u"], CHAIN_DTYPE), jnp.asarray(init_state["eps"], CHAIN_DTYPE)
        suu = jnp.asarray(init_state["suu"])
    else:
        key, sub = jax.random.split(key)
        u = jax.random.normal(sub, (depth, chains, p), CHAIN_DTYPE)
        eps = jnp.full((depth,), 0.3, CHAIN_DTYPE)
        suu = jnp.broadcast_to(jnp.eye(p), (depth, p, p))
    state = {"u": u, "eps": eps, "phis": jnp.asarray(init_state["phis"]), "suu": suu}
    # phase lengths in rounds: ``rounds`` sets averaging and evaluation, relaxing is half of it when warm
    average = rounds if rounds is not None else (48 if warm else 96)
    evaluate = rounds if rounds is not None else 96
    relax = average // 2 if warm else average
    history, converged, message = [], False, ""
    out, polyak, t_avg = None, None, 0
    closed = []  # chain snapshots of the averaging phases, (L, S, P) each
    progress = {"iteration": 1, "phase": "relaxing", "round": 0, "stop": False}

    def run(n, eta_fn, adapt, acc, moments=False, chunk=24, g_fn=lambda t: g, snapshots=False):
        """n rounds, in chunks of ``chunk``: a run-away stops early, and every phase length reuses
        the same two compiled programs (with and without ``moments``). Returns the sums, the last
        chunk's diagnostics and (``snapshots``) the chain snapshots as a list of (L, S, P) arrays.
        After each chunk the callback hears of it (``phase``, ``round``), so that a caller can show
        progress, pause (the dashboard's background solves) or stop within a pass."""
        nonlocal key, state
        if n > chunk:
            sums, shots = None, []
            for k in range(0, n, chunk):
                accum, diag, snaps = run(min(chunk, n - k), lambda t, k=k: eta_fn(t + k), adapt, acc, moments,
                                         chunk, lambda t, k=k: g_fn(t + k), snapshots)
                sums = accum if sums is None else jax.tree_util.tree_map(lambda x, z: x + z, sums, accum)
                shots += snaps
                if escaped(diag) or progress["stop"]:
                    break
            return sums, diag, shots
        n = -(-n // snap_every) * snap_every
        key, sub = jax.random.split(key)
        etas = jnp.asarray(np.array([eta_fn(t) for t in range(n)], float))
        gs = jnp.asarray(np.array([g_fn(t) for t in range(n)], float))
        state, accum, diag, snaps = fn(state, consts, jax.random.split(sub, n), etas, gs, adapt, acc, snap_every,
                                       moments)
        if callback is not None and not progress["stop"]:
            progress["round"] += n
            info = {"iteration": progress["iteration"], "phase": progress["phase"], "round": progress["round"],
                    "seconds": time.perf_counter() - start}
            progress["stop"] = callback(progress["iteration"], info) is False
        return accum, {k: np.asarray(v) for k, v in diag.items()}, (list(np.asarray(snaps)) if snapshots else [])

    def escaped(diag):
        u2 = diag["u2max"]
        return (not np.all(np.isfinite(u2))) or u2.max() > ESCAPE or not np.all(np.isfinite(np.asarray(state["phis"])))

    stopped = "stopped by the callback."

    def halt(diag):
        """Why the passes must end after a phase (chains ran away, or the callback stopped), else ''."""
        return _escape_message(g, diag) if escaped(diag) else stopped if progress["stop"] else ""
    for it in range(1, max_iter + 1):
        progress.update(iteration=it, phase="relaxing")
        # relax (first pass only), then average: the state becomes the Polyak average
        if it == 1 and relax > 0:
            # gamma0 ramps up from the start's value: the kernels keep up with the chains
            ramp = max(1.0, 0.7 * relax)
            _, diag, _ = run(relax, lambda t: eta0, True, False, g_fn=lambda t: g_from + (g - g_from) * min(1.0, (t + 1) / ramp))
            message = halt(diag)
            if message:
                break
        progress["phase"] = "averaging"
        grow = min(2 ** (it - 1), 4)  # later passes average and evaluate longer: noise ~ 1/sqrt(rounds)
        n_avg = average * grow
        # Robbins-Monro continues (decreasing step) and the Polyak average runs over every pass so far;
        # the state never jumps to a single noisy estimate: near the edge of normalisability the map
        # Phi -> <phi phi^T> is steep along the task direction and would amplify that noise
        accum, diag, shots = run(n_avg, lambda t, t0=t_avg: eta0 / (1.0 + (t + t0) / 10.0), True, True,
                                 snapshots=True)
        closed.extend(shots)
        while len(closed) > 2 * POOL_SNAPSHOTS:  # evenly spaced over all averaging rounds, bounded memory
            closed = closed[1::2]
        message = halt(diag)
        if message:  # the last evaluation (if any) stays the result of a stop
            break
        t_avg += n_avg
        polyak = accum if polyak is None else jax.tree_util.tree_map(lambda x, z: x + z, polyak, accum)
        state["phis"] = polyak["phi"] / polyak["n"]
        state["suu"] = polyak["uu"] / polyak["n"]
        # evaluate at the frozen state on fresh rounds
        progress["phase"] = "evaluating"
        accum, diag, _ = run(evaluate * grow, lambda t: 0.0, False, True, moments=True)
        message = halt(diag)
        if message:
            break
        out = _evaluate(state, accum, y, g, beta, depth)
        rec = {"iteration": it, "residual": max(out["res_phi"]), "residual_phi": out["res_phi"],
               "residual_dual": out["res_dual"], "mc_error": out["mc_error"], "ess": out["ess"],
               "acceptance": [float(x) for x in diag["rate"].mean(0)],
               "alignment": [alignment(q, y) for q in out["phis"]],
               "rounds": int(relax * (it == 1) + (n_avg + evaluate) * grow), "seconds": time.perf_counter() - start}
        history.append(rec)
        if callback is not None and callback(it, rec) is False:
            message = stopped
            break
        # the residual must be below tol and resolved: with a Monte Carlo error above tol a small residual is luck
        if max(out["res_phi"]) < tol and max(out["mc_error"]) < tol:
            converged = True
            break
    if out is not None and not converged and max(out["res_phi"]) > NO_SADDLE:
        message = (f"no saddle point found: the kernels that the chains produce at the state differ from it by "
                   f"{max(out['res_phi']):.2g} (relative), far beyond the Monte Carlo error "
                   f"{max(out['mc_error']):.1e}; the tilted density probably does not normalise at gamma0 = {g:.3g} "
                   "(chains drifting far out): use a smaller gamma0 or a larger beta.")
    if out is None or "normalise" in message:  # never return the kernels of a run-away state
        return _failed(depth, p, message + (" No evaluation was completed." if message == stopped else ""), history)
    # the test-point kernels (and the train block beside them) from the averaging phases, where
    # far-out chains are pulled back by the kernels they grow (module docstring)
    pick = np.linspace(0, len(closed) - 1, min(len(closed), POOL_SNAPSHOTS)).round().astype(int)
    shots = np.stack([closed[i] for i in pick])
    pool = [shots[:, l].reshape(-1, p) for l in range(depth)]
    noise = max(out["mc_error"])
    if converged:
        message = (f"converged in {len(history)} evaluation(s): saddle residual {max(out['res_phi']):.1e} on fresh "
                   f"samples (Monte Carlo error {noise:.1e}), {chains} chains per layer.")
    elif not message:
        what = (f"saddle residual {max(out['res_phi']):.2e} above tol {tol:g}" if max(out["res_phi"]) >= tol else
                f"Monte Carlo error {noise:.2e} above tol {tol:g} (the residual {max(out['res_phi']):.2e} is not "
                "resolved)")
        message = (f"{what} after {len(history)} evaluation(s) "
                   f"(Monte Carlo error {noise:.1e}, effective sample fraction {min(out['ess']):.1%}): raise "
                   "max_iter or samples, or use a smaller gamma0 or a larger beta.")
    st = {"u": np.asarray(state["u"]), "eps": np.asarray(state["eps"]), "suu": np.asarray(state["suu"]),
          "phis": np.asarray(out["phis"]), "beta": float(beta)}
    # the action's ln Z at the final state: the chains walk down the stepping stones from it (a few seconds: the
    # callback hears of it, and cannot stop it)
    if callback is not None:
        callback(len(history), {"iteration": len(history), "phase": "action", "round": progress["round"],
                                "seconds": time.perf_counter() - start})
    log_z, log_z_error = log_normalisers(act, c, out["phis"], out["ms"], st["u"], st["eps"], y, g, beta, seed,
                                         n_inner)
    if history:
        action = saddle_action(out["phis"], [-m for m in out["ms"]], y, g * g, 1.0 / beta, log_z)
        history[-1].update(log_z=log_z, action=action, action_mc_error=action_error(log_z_error))
    return {"converged": converged, "message": message, "iterations": len(history), "history": history,
            "phis": out["phis"], "ms": out["ms"], "res_phi": out["res_phi"], "res_dual": out["res_dual"],
            "mc_error": out["mc_error"], "ess": out["ess"], "state": st, "log_z": log_z, "log_z_error": log_z_error,
            "final": {"pool": pool, "w": [np.full(len(q), 1.0 / len(q)) for q in pool],
                      "ms": out["ms"]}}


def _evaluate(state, accum, y, g, beta, depth):
    """Residuals, standard errors and effective sample sizes of one evaluate phase."""
    p = y.shape[0]
    n = float(accum["n"])
    phis = np.asarray(state["phis"])
    est = np.asarray(accum["phi"]) / n
    grp = np.asarray(accum["grp"]) / n  # (L, G, P, P): independent chain groups
    se = grp.std(axis=1, ddof=1) / math.sqrt(GROUPS)
    s_total = np.asarray(state["u"]).shape[1] * n
    naive = np.clip(np.asarray(accum["sq"]) / n - est**2, 0.0, None) / s_total  # independent-sample variance
    mc_error = [float(np.linalg.norm(se[l]) / np.linalg.norm(phis[l])) for l in range(depth)]
    ess = [float(min(1.0, naive[l].sum() / max((se[l] ** 2).sum(), 1e-300))) for l in range(depth)]
    suu = np.asarray(accum["uu"]) / n

    def tilts(kern, uu):
        a = np.linalg.solve(kern[-1] + np.eye(p) / beta, y)
        ms = []
        for l in range(depth - 1):
            rinv = np.asarray(sym_sqrt_pinv(jnp.asarray(kern[l]), KERNEL_EIG_CUTOFF)[1])
            ms.append(rinv @ (uu[l + 1] - np.eye(p)) @ rinv)
        return ms + [g * g * np.outer(a, a)]

    ms_state, ms_fresh = tilts(phis, np.asarray(state["suu"])), tilts(est, suu)
    res_phi = [relative_difference(est[l], phis[l]) for l in range(depth)]
    res_dual = [relative_difference(ms_fresh[l], ms_state[l]) for l in range(depth)]
    return {"phis": phis, "ms": ms_state, "res_phi": res_phi, "res_dual": res_dual,
            "mc_error": mc_error, "ess": ess}


def _escape_message(g, diag):
    return (f"the tilted density does not normalise at gamma0 = {g:.3g}: Monte Carlo chains ran away "
            f"(|u|^2 up to {np.nanmax(np.where(np.isfinite(diag['u2max']), diag['u2max'], np.inf)):.3g}); "
            "use a smaller gamma0 or a larger beta.")


def _failed(depth, p, message, history):
    nan = np.full((p, p), np.nan)
    return {"converged": False, "message": message or "no evaluation was completed.", "iterations": len(history),
            "history": history, "phis": [nan] * depth, "ms": [nan] * depth, "res_phi": [float("inf")] * depth,
            "res_dual": [float("nan")] * depth, "mc_error": [float("nan")] * depth, "ess": [0.0] * depth,
            "state": None, "final": None}
