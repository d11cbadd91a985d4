"""tapcore: cell event recognition from self-supervised time arrow prediction (TAP) features.

The library is pure: it never imports streamlit or plotly. The app (``app.py``, ``pages/``) and the
CLI (``tapcore.cli``) are thin layers over the functions here.

Importing ``tapcore`` changes no environment variable and imports no heavy library; programs
that start a tapcore process call :func:`tapcore.runtime.configure_process` first.
"""

__version__ = "0.1.0"
