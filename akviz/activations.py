"""Activations and their Gaussian expectations (THEORY.md section 2).

For a centred Gaussian pair ``(u, v)`` with covariance ``[[k11, k12], [k12, k22]]``
each activation provides

    E[phi(u) phi(v)]      (the next layer's feature kernel)
    E[phi'(u) phi'(v)]    (the derivative kernel ``dPhi`` of the NTK recursion)

in closed form where one exists (relu, erf, linear) and otherwise by 2-D
Gauss-Hermite quadrature, vectorised over all pairs. Any elementwise ``phi``
can be added with :func:`register_activation`; its derivative defaults to
``jax.grad``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import scipy.special

PairFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], tuple]

#: Gauss-Hermite nodes per dimension. 96 integrates erf/tanh at unit
#: variances to ~1e-14 (64 nodes: ~1e-10 for phi phi, ~4e-9 for phi' phi');
#: accuracy drops as variances grow (the integrand sharpens).
QUADRATURE_NODES = 96

# Pairs are integrated in chunks so memory stays ~chunk * nodes^2 floats.
_QUADRATURE_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity and, optionally, closed-form expectations.

    Attributes:
      name: registry key.
      fn: ``phi``, elementwise, jax-traceable.
      deriv: ``phi'``, elementwise, jax-traceable.
      closed_form: ``(k11, k22, k12) -> (E[phi phi], E[phi' phi'])`` or None,
        in which case Gauss-Hermite quadrature is used.
    """

    name: str
    fn: Callable
    deriv: Callable
    closed_form: Optional[PairFn] = None

    def expectations(self, k11, k22, k12, *, method: str = "auto"):
        """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` elementwise over broadcast arrays.

        ``method`` is ``"auto"`` (closed form when available), ``"closed"`` or
        ``"quadrature"``.
        """
        if method not in ("auto", "closed", "quadrature"):
            raise ValueError(f"method must be 'auto', 'closed' or 'quadrature', got {method!r}.")
        if method == "closed" and self.closed_form is None:
            raise ValueError(f"activation {self.name!r} has no closed form; use method='quadrature'.")
        if self.closed_form is not None and method != "quadrature":
            return self.closed_form(k11, k22, k12)
        return gauss_hermite_expectations(self.fn, self.deriv, k11, k22, k12)


def _relu_closed(k11, k22, k12):
    """Arc-cosine kernels of degree 1 and 0 (Cho & Saul)."""
    s = jnp.sqrt(k11 * k22)
    safe_s = jnp.where(s > 0, s, 1.0)
    cos_t = jnp.clip(k12 / safe_s, -1.0, 1.0)
    t = jnp.arccos(cos_t)
    sin_t = jnp.sqrt(jnp.clip(1.0 - cos_t**2, 0.0, None))
    phiphi = jnp.where(s > 0, s * (sin_t + (jnp.pi - t) * cos_t) / (2 * jnp.pi), 0.0)
    dphidphi = jnp.where(s > 0, (jnp.pi - t) / (2 * jnp.pi), 0.25)
    return phiphi, dphidphi


def _erf_closed(k11, k22, k12):
    """Williams (1997): E[erf erf] = 2/pi asin(2 k12 / sqrt((1+2k11)(1+2k22)))."""
    a = 1.0 + 2.0 * k11
    b = 1.0 + 2.0 * k22
    phiphi = (2.0 / jnp.pi) * jnp.arcsin(jnp.clip(2.0 * k12 / jnp.sqrt(a * b), -1.0, 1.0))
    # erf'(h) = 2/sqrt(pi) exp(-h^2): E[exp(-u^2 - v^2)] = det(I + 2 Sigma)^(-1/2).
    dphidphi = (4.0 / jnp.pi) / jnp.sqrt(a * b - 4.0 * k12**2)
    return phiphi, dphidphi


def _linear_closed(k11, k22, k12):
    return k12 + 0.0 * (k11 + k22), jnp.ones_like(k12 + 0.0 * (k11 + k22))


def _relu_deriv(h):
    return (h > 0).astype(h.dtype)


def _hermite_grid(n: int):
    """Probabilists' Gauss-Hermite nodes/weights for E over N(0, 1)."""
    z, w = scipy.special.roots_hermitenorm(n)  # numpy's hermegauss overflows past ~150 nodes
    return z, w / w.sum()


def gauss_hermite_expectations(fn, deriv, k11, k22, k12, n_nodes: int = QUADRATURE_NODES):
    """2-D Gauss-Hermite estimate of ``(E[phi phi], E[phi' phi'])``, elementwise.

    Writes ``u = sqrt(k11) z1``, ``v = sqrt(k22) (rho z1 + sqrt(1-rho^2) z2)``
    and integrates over the tensor grid of ``z``. Exact for polynomials of
    degree < 2 n_nodes; spectrally accurate for smooth ``phi``.
    """
    k11, k22, k12 = jnp.broadcast_arrays(*(jnp.asarray(k, dtype=float) for k in (k11, k22, k12)))
    return _gauss_hermite(fn, deriv, int(n_nodes), k11, k22, k12)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _gauss_hermite(fn, deriv, n_nodes, k11, k22, k12):
    shape = k12.shape
    z_np, w_np = _hermite_grid(n_nodes)
    z = jnp.asarray(z_np, dtype=k12.dtype)
    w = jnp.asarray(w_np, dtype=k12.dtype)

    def one(triple):
        a, b, c = triple
        sa, sb = jnp.sqrt(a), jnp.sqrt(b)
        rho = jnp.clip(c / jnp.where(sa * sb > 0, sa * sb, 1.0), -1.0, 1.0)
        u = sa * z  # depends on z1 only: evaluate phi(u) once per node
        v = sb * (rho * z[:, None] + jnp.sqrt(1.0 - rho**2) * z[None, :])
        phiphi = jnp.dot(w * fn(u), fn(v) @ w)
        dd = jnp.dot(w * deriv(u), deriv(v) @ w)
        return phiphi, dd

    flat = [k.reshape(-1) for k in (k11, k22, k12)]
    n = flat[0].shape[0]
    chunk = min(_QUADRATURE_CHUNK, max(n, 1))
    pad = (-n) % chunk
    # Pad with unit variances so padded entries stay finite.
    padded = [jnp.concatenate([f, jnp.ones(pad, f.dtype)]).reshape(-1, chunk) for f in flat]
    phiphi, dd = jax.lax.map(lambda t: jax.vmap(one)(t), tuple(padded))
    return phiphi.reshape(-1)[:n].reshape(shape), dd.reshape(-1)[:n].reshape(shape)


_REGISTRY: dict[str, Activation] = {}


def register_activation(name: str, fn: Callable, deriv: Optional[Callable] = None,
                        closed_form: Optional[PairFn] = None) -> Activation:
    """Add an elementwise activation by name (quadrature unless ``closed_form``).

    ``deriv`` defaults to ``jax.grad(fn)`` applied elementwise.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("activation name must be a non-empty string.")
    if deriv is None:
        scalar_grad = jax.grad(lambda h: fn(h))

        def deriv(h, _g=scalar_grad):
            return jnp.vectorize(_g)(h)

    act = Activation(name=name, fn=fn, deriv=deriv, closed_form=closed_form)
    _REGISTRY[name] = act
    return act


def get_activation(activation) -> Activation:
    """Look up an activation by name (or pass an :class:`Activation` through)."""
    if isinstance(activation, Activation):
        return activation
    try:
        return _REGISTRY[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {activation!r}; choose one of: {', '.join(sorted(_REGISTRY))}."
        ) from None


def list_activations() -> list[str]:
    """Names of all registered activations."""
    return sorted(_REGISTRY)


register_activation("relu", lambda h: jnp.maximum(h, 0.0), _relu_deriv, _relu_closed)
register_activation("erf", jax.scipy.special.erf,
                    lambda h: (2.0 / jnp.sqrt(jnp.pi)) * jnp.exp(-(h**2)), _erf_closed)
register_activation("linear", lambda h: h, jnp.ones_like, _linear_closed)
register_activation("tanh", jnp.tanh, lambda h: 1.0 - jnp.tanh(h) ** 2)
register_activation("gelu", lambda h: jax.nn.gelu(h, approximate=False))
register_activation("softplus", jax.nn.softplus, jax.nn.sigmoid)
