"""tapcore: cell event recognition from self-supervised time arrow prediction (TAP) features.

The library is pure: it never imports streamlit or plotly. The app (``app.py``, ``pages/``) and the
CLI (``tapcore.cli``) are thin layers over the functions here.

Importing ``tapcore`` before ``torch`` turns on PyTorch's transparent-huge-page allocation of large
CPU tensors (``THP_MEM_ALLOC_ENABLE=1``; PyTorch reads it once, at its first allocation). Whole-frame
feature maps are hundreds of MB, and with 4 KiB pages every fresh allocation is paid in page faults:
huge pages made one hela01 frame of ``tapcore predict`` about 20 % faster on the 2-core CPU
(``bench/predict.py``). Set ``THP_MEM_ALLOC_ENABLE=0`` in the environment to keep 4 KiB pages.
"""

import os as _os

_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
