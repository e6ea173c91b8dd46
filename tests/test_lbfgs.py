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
