"""tapcore: cell event recognition from self-supervised time arrow prediction (TAP) features.

The library is pure: it never imports streamlit or plotly. The app (``app.py``, ``pages/``) and the
CLI (``tapcore.cli``) are thin layers over the functions here.
"""

__version__ = "0.1.0"
