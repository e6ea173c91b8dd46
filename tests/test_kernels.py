"""Lazy NNGP/NTK against exact oracles: closed forms and wide random networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import akviz
from akviz._precision import float64
from akviz.activations import get_activation


def _points(n=5, d=4, seed=0, sphere=False):
    x = np.random.default_rng(seed).standard_normal((n, d))
    if sphere:  # |x|^2 = D: unit input variances, where quadrature is most accurate
        x *= np.sqrt(d) / np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.mark.parametrize("activation", ["erf", "linear"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_quadrature_matches_closed_form(activation, depth):
    x = _points(6, 5, seed=depth, sphere=True)
    closed = akviz.lazy_kernels(x, depth=depth, activation=activation, method="closed")
    quad = akviz.lazy_kernels(x, depth=depth, activation=activation, method="quadrature")
    for a, b in zip(closed.nngp + closed.ntk, quad.nngp + quad.ntk):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


def test_linear_kernels_are_input_kernel():
    x = _points()
    c = x @ x.T / x.shape[1]
    k = akviz.lazy_kernels(x, depth=3, activation="linear")
    for layer, (phi, ntk) in enumerate(zip(k.nngp, k.ntk), start=1):
        np.testing.assert_allclose(phi, c, atol=1e-14)
        np.testing.assert_allclose(ntk, (layer + 1) * c, atol=1e-13)  # K^l = (l+1) C for linear nets


def test_relu_closed_form_known_values():
    # One point with |x|^2/D = 2: Phi^1 = E[relu(h)^2] = 2/2 = 1, dPhi = 1/2.
    x = np.array([[np.sqrt(2.0), np.sqrt(2.0)]])
    k = akviz.lazy_kernels(x, depth=1, activation="relu")
    np.testing.assert_allclose(k.nngp[0], [[1.0]], atol=1e-14)
    np.testing.assert_allclose(k.derivative[0], [[0.5]], atol=1e-14)
    np.testing.assert_allclose(k.ntk[0], [[1.0 + 2.0 * 0.5]], atol=1e-14)
    # Orthogonal unit-variance pair: E[relu relu] = 1/(2 pi), E[step step] = 1/4.
    x = np.array([[np.sqrt(2.0), 0.0], [0.0, np.sqrt(2.0)]])
    k = akviz.lazy_kernels(x, depth=1, activation="relu")
    np.testing.assert_allclose(k.nngp[0][0, 1], 1 / (2 * np.pi), atol=1e-14)
    np.testing.assert_allclose(k.derivative[0][0, 1], 0.25, atol=1e-14)


def test_cross_kernel_matches_joint_kernel():
    x = _points(7, 4, seed=3)
    joint = akviz.ntk(x, depth=2, activation="relu")
    cross = akviz.ntk(x[:3], x[3:], depth=2, activation="relu")
    np.testing.assert_allclose(cross, joint[:3, 3:], atol=1e-13)


def test_bad_arguments_raise_readable_errors():
    x = _points()
    with pytest.raises(ValueError, match="depth"):
        akviz.nngp(x, depth=0)
    with pytest.raises(ValueError, match="unknown activation"):
        akviz.nngp(x, depth=1, activation="swish")
    with pytest.raises(ValueError, match="same number of features"):
        akviz.nngp(x, x[:, :2], depth=1)
    with pytest.raises(ValueError, match="no closed form"):
        akviz.nngp(x, depth=1, activation="tanh", method="closed")


def test_float64_is_local_to_akviz():
    akviz.nngp(_points(), depth=1)
    assert jnp.ones(1).dtype == jnp.float32  # the user's JAX stays float32


def test_registered_activation_uses_quadrature_and_autodiff():
    # cube: E[u^3 v^3] = 9 k11 k22 k12 + 6 k12^3 (Isserlis), derivative 9 E[u^2 v^2].
    akviz.register_activation("cube_test", lambda h: h**3)
    x = _points(4, 3, seed=1)
    k = akviz.lazy_kernels(x, depth=1, activation="cube_test")
    c = x @ x.T / 3
    d = np.diag(c)
    expected = 9 * np.outer(d, d) * c + 6 * c**3
    np.testing.assert_allclose(k.nngp[0], expected, rtol=1e-10)
    expected_d = 9 * (np.outer(d, d) + 2 * c**2)
    np.testing.assert_allclose(k.derivative[0], expected_d, rtol=1e-10)


# ---------------------------------------------------------------- wide random networks

def _random_network(d, width, depth, rng):
    """Weights of a mu-P network: input (d, N), hidden (N, N) x (depth-1), readout (N,)."""
    return (rng.standard_normal((d, width)),
            [rng.standard_normal((width, width)) for _ in range(depth - 1)],
            rng.standard_normal(width))


@float64  # act.fn is JAX: keep the oracle in float64
def _empirical_kernels(x, network, act):
    """Feature kernel and NTK of one random mu-P network (THEORY.md 1), exact backprop.

    NTK = Phi^L + sum_l G^{l+1} * Phi^l + G^1 * C, g^l = gamma0 N df/dh^l (gamma0 cancels).
    """
    w_in, weights, readout = network
    d, width = w_in.shape
    hs = [x @ w_in / np.sqrt(d)]
    for w in weights:
        hs.append(np.asarray(act.fn(hs[-1])) @ w / np.sqrt(width))
    feats = [np.asarray(act.fn(h)) for h in hs]
    phis = [f @ f.T / width for f in feats]
    g = np.asarray(act.deriv(hs[-1])) * readout
    ntk = phis[-1].copy()
    for layer in range(len(weights), 0, -1):
        ntk += (g @ g.T / width) * phis[layer - 1]
        g = np.asarray(act.deriv(hs[layer - 1])) * (g @ weights[layer - 1].T / np.sqrt(width))
    ntk += (g @ g.T / width) * (x @ x.T / d)
    return phis[-1], ntk


def test_empirical_ntk_helper_matches_autodiff():
    """The Monte Carlo oracle itself, checked against jax.jacobian at small width."""
    x = _points(3, 4, seed=2)
    act = get_activation("tanh")
    width, depth = 16, 3
    _, ntk = _empirical_kernels(x, _random_network(4, width, depth, np.random.default_rng(5)), act)
    rng = np.random.default_rng(5)
    params = [rng.standard_normal((4, width))] + [rng.standard_normal((width, width)) for _ in range(depth - 1)]
    params.append(rng.standard_normal(width))

    with jax.enable_x64(True):
        def f(ps, xi):
            h = xi @ ps[0] / 2.0
            for w in ps[1:-1]:
                h = jnp.tanh(h) @ w / np.sqrt(width)
            return jnp.tanh(h) @ ps[-1] / width  # gamma0 = 1

        jac = [jax.grad(f)([jnp.asarray(p) for p in params], jnp.asarray(xi)) for xi in x]
        flat = np.stack([np.concatenate([np.ravel(g) for g in j]) for j in jac])
    np.testing.assert_allclose(ntk, width * flat @ flat.T, rtol=1e-10)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_kernels_match_wide_random_networks(depth):
    """Width 10^4, 4 seeds averaged: within 2% relative Frobenius error (relu, erf, tanh)."""
    x = _points(5, 4, seed=10)
    width, seeds, names = 10_000, 4, ("relu", "erf", "tanh")
    mc = {name: [] for name in names}
    for s in range(seeds):
        network = _random_network(x.shape[1], width, depth, np.random.default_rng(100 + s))
        for name in names:  # common random weights across activations: 3x fewer draws
            mc[name].append(_empirical_kernels(x, network, get_activation(name)))
    for name in names:
        phi_mc = np.mean([m[0] for m in mc[name]], axis=0)
        ntk_mc = np.mean([m[1] for m in mc[name]], axis=0)
        k = akviz.lazy_kernels(x, depth=depth, activation=name)
        err_phi = np.linalg.norm(phi_mc - k.nngp[-1]) / np.linalg.norm(k.nngp[-1])
        err_ntk = np.linalg.norm(ntk_mc - k.ntk[-1]) / np.linalg.norm(k.ntk[-1])
        print(f"{name} depth {depth}: rel. Frobenius error NNGP {err_phi:.4f}, NTK {err_ntk:.4f}")
        assert err_phi < 0.02, (name, depth, err_phi)
        assert err_ntk < 0.02, (name, depth, err_ntk)
