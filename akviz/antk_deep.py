"""aNTK for depth >= 2 by the fixed-point equations of THEORY.md 4.3. **Experimental.**

The equations are derived in THEORY.md (not in the paper) and have not yet been
checked against finite-width networks; treat every number from here as
provisional. Not implemented yet: ``antk(..., depth>=2)`` raises ``ValueError``.
"""

from __future__ import annotations


def antk_deep(*args, **kwargs):
    raise ValueError("depth >= 2 for the aNTK is not implemented yet (THEORY.md 4.3 is experimental); use depth=1.")
