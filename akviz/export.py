"""Results as downloadable files: JSON (scalars and lists) and NPZ (every array)."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np


def to_plain(value):
    """NumPy scalars/arrays to plain Python, NaN/inf to None: strict JSON for any result field."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def json_number(value):
    """``float(value)``, or None when it is NaN or infinite (JSON has no NaN)."""
    return to_plain(float(value))


def _public_fields(result) -> dict:
    if dataclasses.is_dataclass(result):
        items = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    else:
        items = dict(vars(result))
    return {k: v for k, v in items.items() if not k.startswith("_") and k != "state"}


def to_json_bytes(result, *, include_arrays: bool = False) -> bytes:
    """A result's scalars and short lists as JSON; large arrays only with ``include_arrays``."""
    out = {}
    for name, value in _public_fields(result).items():
        if isinstance(value, np.ndarray) and value.size > 1000 and not include_arrays:
            out[name] = {"shape": list(value.shape), "in": "npz"}
        else:
            out[name] = to_plain(value)
    return json.dumps(out, indent=1).encode()


def to_npz_bytes(result) -> bytes:
    """Every array field (and every number) of a result in one compressed ``.npz``."""
    arrays = {}
    for name, value in _public_fields(result).items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        elif isinstance(value, (int, float, bool, np.number)):
            arrays[name] = np.asarray(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float, np.number)) for v in value):
            arrays[name] = np.asarray(value, dtype=float)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
