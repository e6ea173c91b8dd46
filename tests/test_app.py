"""The dashboard runs headless (streamlit.testing) and draws the right data."""

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

import akviz

APP = Path(__file__).resolve().parents[1] / "app.py"


def _heatmaps(at):
    """Plotly figures of the page, as dicts."""
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _array(value):
    """A Plotly JSON array: plain lists, or Plotly's typed-array dict {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = tuple(int(v) for v in shape.split(","))
        return flat.reshape(shape) if shape else flat
    return np.asarray(value, float)


def test_kernel_page_draws_sorted_nngp_and_ntk_heatmaps():
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, at.exception
    figs = _heatmaps(at)
    assert figs, "no figure drawn"
    traces = [t for t in figs[0]["data"] if t["type"] == "heatmap"]
    assert len(traces) == 2  # NNGP and NTK, depth 1
    ds = akviz.load_dataset("digits:3v8", 100, 200, 0)
    order = np.argsort(ds.labels_train, kind="stable")
    expected = akviz.nngp(ds.x_train, depth=1, activation="relu")[np.ix_(order, order)]
    np.testing.assert_allclose(_array(traces[0]["z"]), expected, rtol=1e-9)

    at.sidebar.slider(key="depth").set_value(2).run()
    assert not at.exception, at.exception
    traces = [t for t in _heatmaps(at)[0]["data"] if t["type"] == "heatmap"]
    assert len(traces) == 4
