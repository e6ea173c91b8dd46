"""Test-session settings."""

import os

# no compiled programs written to the home folder by the tests (dashboard pages and the command line switch the
# cache on; tests/test_cli.py checks it with a folder of its own)
os.environ.setdefault("AKVIZ_JAX_CACHE", "0")
