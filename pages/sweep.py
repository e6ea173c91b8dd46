"""Test loss against gamma0: adaptive kernels vs the lazy baselines, with progress and caching."""

import numpy as np
import pandas as pd
import streamlit as st

import akviz

from akviz.plots import PALETTE, lines
from dashboard import common

st.title("Test loss vs gamma0")
s = common.page_setup()
c1, c2, c3 = st.columns(3)
methods = c1.multiselect("Adaptive kernels", list(common.METHOD_LABELS), default=[s.method],
                         format_func=common.METHOD_LABELS.get, key="sweep_methods")
lo, hi = c2.select_slider("gamma0 range", options=[0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
                          value=(0.1, 1.0), key="sweep_range")
n_points = c3.slider("Points", 3, 12, 5, key="sweep_points")
grid = [float(g) for g in np.round(np.geomspace(lo, hi, n_points), 3)] if hi > lo else [float(lo)]
d1, d2 = st.columns([1, 2])
with_networks = d1.checkbox("Add finite-width networks", key="sweep_networks",
                            help="Train (aNTK) or sample (aNBK) a real network at each gamma0 and mark its test loss.")
net_width = d2.select_slider("Network width N", [256, 512, 1024, 2048], value=512, key="sweep_width",
                             disabled=not with_networks)
NET_STEPS = 2000


@st.cache_data(max_entries=64, show_spinner=False)
def network_loss(method: str, data: tuple, depth: int, activation: str, gamma0: float, strength: float,
                 width: int, steps: int) -> float:
    ds = common.dataset(*data)
    if method == "anbk":
        net = akviz.sample_posterior(ds, width=width, depth=depth, activation=activation, gamma0=gamma0,
                                     beta=strength, steps=steps, burn_in=steps // 4, seed=data[-1])
    else:
        net = akviz.train_network(ds, width=width, depth=depth, activation=activation, gamma0=gamma0,
                                  weight_decay=strength, steps=steps, seed=data[-1])
    return float(net.test_loss)


def net_args(method, g):
    strength = s.beta if method == "anbk" else s.weight_decay
    return (method, (s.dataset, s.n_train, s.n_test, s.seed), s.depth, s.activation, float(g), float(strength),
            int(net_width), NET_STEPS)


try:
    ds = common.dataset(**s.data)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

if st.button("Run sweep", type="primary", key="run_sweep"):
    total = len(grid) * len(methods) * (2 if with_networks else 1)
    bar = st.progress(0.0, text="Starting...")
    with st.status("Sweeping gamma0 (each point warm-starts from the previous; press Stop to interrupt)",
                   expanded=True) as status:
        st.button("Stop", key="stop_sweep")  # any click reruns the page, which ends this run; points so far stay cached
        done = 0
        for method in methods:
            for g in grid:
                result, info = common.adaptive(s, method=method, gamma0=g)
                done += 1
                bar.progress(done / total, text=f"{common.METHOD_LABELS[method]}: gamma0 = {g:g} ({done}/{total})")
                st.write(f"{common.METHOD_LABELS[method]}, gamma0 = {g:g}: test MSE {result.test_loss:.4f}, "
                         + common.diagnostics(result, info))
                if with_networks:
                    loss = network_loss(*net_args(method, g))
                    st.session_state[f"net:{net_args(method, g)}"] = True
                    done += 1
                    bar.progress(done / total, text=f"width-{net_width} network at gamma0 = {g:g} ({done}/{total})")
                    st.write(f"width-{net_width} network, gamma0 = {g:g}: test MSE {loss:.4f}")
        status.update(label="Sweep finished", state="complete", expanded=False)

# Draw whatever is cached for this grid, so an interrupted sweep still shows its points.
cache = common.solution_cache()
series, errors, rows, markers, unconverged = {}, {}, [], {}, {}
colours = {}  # one colour per method: its curve, its unconverged points and its networks
for i, method in enumerate(methods):
    name = "aNBK" if method == "anbk" else "aNTK"
    colours[name] = colours[f"network N={net_width} ({name})"] = PALETTE[i]
    pts = [(g, cache.get(common.problem_key(s, method), g)) for g in grid]
    pts = [(g, r) for g, r in pts if r is not None]
    if not pts:
        continue
    series[name] = [r.test_loss for _, r in pts]
    errors[name] = [r.test_error for _, r in pts]
    bad = [(g, r) for g, r in pts if not r.converged]
    if bad:  # gamma0, test loss, test error of the points that did not converge
        unconverged[name] = ([g for g, _ in bad], [r.test_loss for _, r in bad], [r.test_error for _, r in bad])
    for g, r in pts:
        rows.append({"method": name, "gamma0": g, "test MSE": r.test_loss, "test error": r.test_error,
                     "converged": r.converged, "alignment (last layer)": r.alignment[-1]})
    if with_networks:
        # Only networks already computed (a cache lookup would otherwise start new runs here).
        nets = [(g, network_loss(*net_args(method, g))) for g, _ in pts if st.session_state.get(f"net:{net_args(method, g)}")]
        if nets:
            markers[f"network N={net_width} ({name})"] = ([g for g, _ in nets], [v for _, v in nets],
                                                        [f"width {net_width}"] * len(nets))

if not rows:
    st.info("Press **Run sweep** to solve the adaptive kernels on this grid: "
            + ", ".join(f"{g:g}" for g in grid) + ".")
    st.stop()

xs = [g for g in grid if any(r["gamma0"] == g for r in rows)]
baselines = {}
if "anbk" in methods:
    baselines[f"NNGP (ridge 1/beta = {1 / s.beta:g})"] = common.lazy(
        **s.data, method="nngp", depth=s.depth, activation=s.activation, ridge=1.0 / s.beta)
if "antk" in methods:
    baselines[f"NTK (ridge (L+1) lambda = {(s.depth + 1) * s.weight_decay:g})"] = common.lazy(
        **s.data, method="ntk", depth=s.depth, activation=s.activation, ridge=(s.depth + 1) * s.weight_decay)
    baselines[f"NNGP (ridge lambda = {s.weight_decay:g})"] = common.lazy(
        **s.data, method="nngp", depth=s.depth, activation=s.activation, ridge=s.weight_decay)

x_for = {name: [r["gamma0"] for r in rows if r["method"] == name] for name in series}
# the baselines take the palette after the methods' colours
colours.update({k: PALETTE[(len(methods) + i) % len(PALETTE)] for i, k in enumerate(baselines)})
fig = lines(xs, {}, title=f"Test MSE vs gamma0 ({ds.description}, P = {s.n_train})", xaxis="gamma0",
            yaxis="test MSE", log_x=True, hlines={k: v.test_loss for k, v in baselines.items()}, markers=markers,
            colours=colours)
for name, ys in series.items():
    fig.add_scatter(x=x_for[name], y=ys, mode="lines+markers", name=name, line=dict(color=colours[name]))


def mark_unconverged(figure, column):
    """Open circles in the method's colour on the points that did not converge (``column`` 1: loss, 2: error)."""
    for name, points in unconverged.items():
        figure.add_scatter(x=points[0], y=points[column], mode="markers", name=f"{name} not converged",
                           hovertext="not converged",
                           marker=dict(size=16, symbol="circle-open", line=dict(width=2), color=colours[name]))


mark_unconverged(fig, 1)
st.plotly_chart(fig, width="stretch", key="sweep_loss")
if ds.is_binary:
    fig_err = lines(xs, {}, title="Test classification error", xaxis="gamma0", yaxis="test error", log_x=True,
                    hlines={k: v.test_error for k, v in baselines.items()}, colours=colours)
    for name, ys in errors.items():
        fig_err.add_scatter(x=x_for[name], y=ys, mode="lines+markers", name=name, line=dict(color=colours[name]))
    mark_unconverged(fig_err, 2)
    st.plotly_chart(fig_err, width="stretch", key="sweep_error")
table = pd.DataFrame(rows)
if not table["converged"].all():
    st.warning("Some points did not converge (open circles); their losses are not trustworthy.")
four = common.FOUR_DECIMALS
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"test MSE": four, "test error": four, "alignment (last layer)": four})
common.downloads("gamma0-sweep", fig)
st.download_button("Table (CSV)", table.to_csv(index=False), "gamma0-sweep.csv", mime="text/csv",
                   key="dl-sweep-csv")
