"""akviz dashboard: ``streamlit run app.py``.

The entry point draws the shared sidebar (so settings persist across pages
and live in the URL), then runs the chosen page.
"""

import streamlit as st

from dashboard import common

st.set_page_config(page_title="akviz: adaptive kernels", layout="wide")

PAGES = [
    st.Page("pages/kernels.py", title="Kernel explorer", default=True),
    st.Page("pages/densities.py", title="Preactivation densities"),
    st.Page("pages/dmft.py", title="DMFT convergence"),
    st.Page("pages/sweep.py", title="Test loss vs gamma0"),
    st.Page("pages/network.py", title="Theory vs network"),
    st.Page("pages/deep_linear.py", title="Deep linear networks"),
]

page = st.navigation(PAGES)
common.load_url_state()
common.sidebar()
page.run()
common.save_url_state()
