"""The dashboard runs headless (streamlit.testing) and draws the right data."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import akviz
from akviz.deep_linear import linear_overlaps

APP = Path(__file__).resolve().parents[1] / "app.py"


def _array(value):
    """A Plotly JSON array: plain lists, or Plotly's typed-array dict {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = tuple(int(v) for v in shape.split(","))
        return flat.reshape(shape) if shape else flat
    return np.asarray(value, float)


def _figures(at):
    return {chart.proto.id: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def _figure(at, key):
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key in c.proto.id]
    assert figs, f"no figure {key!r}; have {list(_figures(at))}"
    return figs[0]


def _app(**query):
    at = AppTest.from_file(str(APP), default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at


def test_deep_linear_page_matches_closed_form():
    at = _app(beta=10.0).run()
    at.switch_page("pages/deep_linear.py").run()
    assert not at.exception, at.exception
    fig = _figure(at, "overlaps")
    exact = {t["name"]: _array(t["y"]) for t in fig["data"] if t["name"].startswith("exact")}
    np.testing.assert_allclose(exact["exact, gamma0=1"], linear_overlaps(1.0, 10.0, 4), rtol=1e-12)
    solver = {t["name"]: _array(t["y"]) for t in fig["data"] if t["name"].startswith("solver")}
    np.testing.assert_allclose(solver["solver, gamma0=2"], linear_overlaps(2.0, 10.0, 4), rtol=1e-8)
