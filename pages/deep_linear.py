"""Deep linear networks: the exact Bayesian saddle point (THEORY.md 3.3), no sampling needed."""

import numpy as np
import pandas as pd
import streamlit as st

import akviz
from akviz.deep_linear import linear_overlaps, whitened_task
from akviz.plots import PALETTE, REFERENCE, lines
from dashboard import common

st.title("Deep linear networks")
st.markdown(
    "For a linear network (`phi(h) = h`) with whitened inputs (`C = I`) and `|y| = 1`, the aNBK saddle "
    "point is exact: `Phi^l = I + (c_l - 1) y y^T` with `c_l = r^l`, `r = c^(1/L)` and "
    "`c = (1 + gamma0^2 c / (c + 1/beta)^2)^L`. Feature learning is the growth of the overlaps "
    "`c_l = y^T Phi^l y` above their lazy value 1, more in deeper layers and at larger `gamma0`."
)
s = common.page_setup()
col1, col2 = st.columns(2)
depth = col1.slider("Depth L (this page)", 1, 8, max(s.depth, 4), key="linear_depth")
gammas = col2.multiselect("gamma0 values", [0.25, 0.5, 1.0, 1.5, 2.0, 3.0], default=[0.5, 1.0, 2.0],
                          key="linear_gammas")
if not gammas:
    st.info("Pick at least one gamma0.")
    st.stop()


@st.cache_data(max_entries=64, show_spinner=False)
def solver_overlaps(gamma0: float, beta: float, depth: int):
    """The akviz solver's answer on the whitened task (its exact Gaussian path)."""
    ds = whitened_task(n_train=8, n_test=4, seed=0)
    r = akviz.anbk(ds, gamma0=gamma0, beta=beta, depth=depth, activation="linear")
    return [float(ds.y_train @ k @ ds.y_train) for k in r.kernels], bool(r.converged), r.message


layers = np.arange(1, depth + 1)
exact = {f"exact, gamma0={g:g}": linear_overlaps(g, s.beta, depth) for g in sorted(gammas)}
rows, markers = [], {}
for g in sorted(gammas):
    solved, converged, message = solver_overlaps(float(g), float(s.beta), depth)
    markers[f"solver, gamma0={g:g}"] = (layers, solved, [f"converged: {converged}"] * depth)
    for l, (c_exact, c_solved) in enumerate(zip(exact[f"exact, gamma0={g:g}"], solved), start=1):
        rows.append({"gamma0": g, "layer": l, "c_l exact": c_exact, "c_l solver": c_solved,
                     "|difference|": abs(c_exact - c_solved)})
# one colour per gamma0: its closed-form curve and the solver's markers on it
colours = {"lazy (c_l = 1)": REFERENCE}
for i, g in enumerate(sorted(gammas)):
    colours[f"exact, gamma0={g:g}"] = colours[f"solver, gamma0={g:g}"] = PALETTE[i % len(PALETTE)]
fig = lines(layers, exact, title=f"Overlaps c_l = y^T Phi^l y (beta = {s.beta:g})", xaxis="layer l",
            yaxis="c_l", hlines={"lazy (c_l = 1)": 1.0}, markers=markers, colours=colours)
st.plotly_chart(fig, width="stretch", key="overlaps")
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"|difference|": common.SCIENTIFIC})
st.caption(f"Largest difference between the closed form and the solver: {table['|difference|'].max():.1e}. "
           "beta is the sidebar's value (switch the adaptive kernel to aNBK to change it).")
common.downloads("deep-linear-overlaps", fig)
st.download_button("Table (CSV)", table.to_csv(index=False), "deep-linear-overlaps.csv", mime="text/csv",
                   key="dl-linear-csv")
