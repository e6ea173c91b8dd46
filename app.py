"""akviz dashboard: ``streamlit run app.py``.

Each page draws the shared sidebar itself (``dashboard.common.page_setup``):
settings persist across pages and live in the URL.
"""

import streamlit as st

from dashboard.common import APP_RAN

st.set_page_config(page_title="akviz: adaptive kernels", layout="wide")
st.session_state[APP_RAN] = True  # the pages check that they run under this navigation

PAGES = [
    st.Page("pages/kernels.py", title="Kernel explorer", default=True),
    st.Page("pages/densities.py", title="Preactivation densities"),
    st.Page("pages/dmft.py", title="DMFT convergence"),
    st.Page("pages/sweep.py", title="Test loss vs gamma0"),
    st.Page("pages/network.py", title="Theory vs network"),
    st.Page("pages/deep_linear.py", title="Deep linear networks"),
]

st.navigation(PAGES).run()
