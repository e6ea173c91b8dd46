"""akviz dashboard: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="akviz: adaptive kernels", layout="wide")

pages = [
    st.Page("pages/kernels.py", title="Layer kernels", default=True),
]
st.navigation(pages).run()
