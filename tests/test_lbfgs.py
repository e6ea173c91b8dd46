"""The JAX L-BFGS of the aNTK fixed-point phase, on problems with known minimisers."""

import jax
import jax.numpy as jnp
import numpy as np

from akviz import lbfgs
from akviz._precision import float64


def _quadratic(x, args):
    a, b = args
    return 0.5 * x @ (a @ x) - b @ x


def _rosenbrock(x, args):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@float64
def test_quadratic_reaches_the_solution_of_the_linear_system():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    a = q @ np.diag(np.logspace(0, 3, 50)) @ q.T  # condition number 1e3
    b = rng.normal(size=50)
    args = (jnp.asarray(a), jnp.asarray(b))
    vg = jax.value_and_grad(_quadratic)
    st = lbfgs.runner(vg)(lbfgs.init_state(vg, jnp.zeros(50), args), 500, args)
    # f is flat to round-off within ~sqrt(eps / lambda_min) ~ 1e-8 of the minimiser
    np.testing.assert_allclose(np.asarray(st.x), np.linalg.solve(a, b), rtol=0, atol=1e-7)
    assert int(st.iterations) < 500  # stops early once no step decreases the value any more
    # one evaluation at the start, at least one per iteration (more where the line search halves)
    assert int(st.evaluations) >= int(st.iterations) + 1


@float64
def test_rosenbrock_minimum_and_resumable_runs():
    vg = jax.value_and_grad(_rosenbrock)
    run = lbfgs.runner(vg)
    st = lbfgs.init_state(vg, jnp.asarray([-1.2, 1.0, -0.5, 0.8]), ())
    values = []
    for _ in range(8):  # resuming a state continues the same iteration
        st = run(st, 50, ())
        values.append(float(st.f))
    assert all(b <= a for a, b in zip(values, values[1:]))
    np.testing.assert_allclose(np.asarray(st.x), np.ones(4), atol=1e-6)



def _two_loop_direction(st):
    """``-H g`` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4), in NumPy: the oracle
    for the compact form the module applies."""
    m = st.rho.shape[0]
    S, Y, rho = (np.asarray(v, dtype=np.float64) for v in (st.s, st.y, st.rho))
    q = np.asarray(st.g)
    newest_first = [(int(st.slot) - 1 - i) % m for i in range(m)]
    alpha = {}
    for j in newest_first:
        alpha[j] = rho[j] * S[j] @ q
        q = q - alpha[j] * Y[j]
    k = newest_first[0]
    r = q / (rho[k] * Y[k] @ Y[k]) if rho[k] > 0 else q / np.linalg.norm(np.asarray(st.g))
    for j in reversed(newest_first):
        r = r + S[j] * (alpha[j] - rho[j] * Y[j] @ r)
    return -r


@float64
def test_compact_direction_equals_the_two_loop_recursion():
    """With the ring filling, full and wrapped round: the direction of the two-loop recursion."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    a = q @ np.diag(np.logspace(0, 3, 60)) @ q.T
    b = rng.normal(size=60)
    args = (jnp.asarray(a), jnp.asarray(b))
    vg = jax.value_and_grad(lambda x, args: _quadratic(x, args) + 0.1 * jnp.sum(x**4))  # not quadratic
    run = lbfgs.runner(vg)
    st = lbfgs.init_state(vg, jnp.zeros(60), args, memory=7)
    for n in (1, 3, 7, 12, 30):  # 1, 4, 11, 23, 53 iterations
        st = run(st, n, args)
        sg, yg, resolved = lbfgs._products(st)
        d = np.asarray(lbfgs._direction(resolved, sg, yg))
        expected = _two_loop_direction(st)
        assert np.linalg.norm(d - expected) <= 1e-12 * np.linalg.norm(expected), int(st.iterations)
