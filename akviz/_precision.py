"""Float64 inside akviz without switching it on for the whole process.

JAX's ``jax_enable_x64`` flag is global; users of akviz may run their own
float32 code in the same interpreter. Every public entry point is wrapped in
:func:`float64`, which enables x64 for the duration of the call only (the
setting is thread-local, so concurrent Streamlit sessions do not interfere).
"""

from __future__ import annotations

import functools

import jax


def float64(fn):
    """Run ``fn`` with JAX 64-bit types enabled (kernels need the precision)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper
