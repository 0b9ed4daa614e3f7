"""The plotting functions under their original import path (``icapnet.visualize``).

The code lives in :mod:`icapnet.plots`; this module only keeps ``from icapnet.visualize import
attention_figure`` (notebooks people already have) working, with the same names.
"""

from icapnet.plots import *  # noqa: F403
from icapnet.plots import __all__  # noqa: F401
