"""Compiled programs kept on disk between processes (JAX's persistent compilation cache).

Much of a first solve in a new process is XLA compilation: the depth-1 aNBK on digits:3v8 (P=100,
``gamma0=0.3``) took 11.6 s in a fresh process and 3.5-4 s once compiled; with the cache filled by an
earlier process, the first call took 5.6-5.8 s. The dashboard and the command line switch the cache on;
the library itself leaves JAX's global configuration alone (call :func:`enable_compilation_cache` to opt
in from your own code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax

#: Environment variable naming the cache folder; ``0`` or ``off`` turns the cache off.
ENV = "AKVIZ_JAX_CACHE"

#: Programs that compile faster than this are not worth a file (most of akviz's compile time is in a few
#: programs of 0.1-3 s; the many small ones cost more to read than to compile).
MIN_COMPILE_SECONDS = 0.05


def cache_dir() -> Optional[Path]:
    """``$AKVIZ_JAX_CACHE``, else ``~/.cache/akviz/jax``; ``None`` where ``$AKVIZ_JAX_CACHE`` is ``0`` or ``off``."""
    value = os.environ.get(ENV)
    if value is not None and value.strip().lower() in ("0", "off", "false", "no"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "akviz" / "jax"


def enable_compilation_cache(path=None) -> Optional[Path]:
    """Keep compiled XLA programs in ``path`` (default :func:`cache_dir`) for later processes.

    Returns the folder in use, or ``None`` where the cache is off or the folder cannot be created (a
    read-only home, say: then everything compiles as before). Call it before the first computation: JAX
    reads the setting when it first compiles.
    """
    path = cache_dir() if path is None else Path(path)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
