"""The library layer never imports the UI layer (DESIGN.md: imports point downwards only)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tapcore_never_imports_streamlit_or_plotly():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "tapcore").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'plotly'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"tapcore imported UI modules: {out.stdout}"
    assert len(modules) >= 1


def test_importing_tapcore_changes_no_environment_and_configure_process_sets_huge_pages():
    """``import tapcore`` leaves os.environ alone; entry points call tapcore.runtime.configure_process,
    which sets THP_MEM_ALLOC_ENABLE=1 (read by torch once) but keeps a user's own value."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["PYTHONPATH"] = str(ROOT)
    plain = "import os; a = dict(os.environ); import tapcore, tapcore.cli; print(dict(os.environ) == a)"
    out = subprocess.run([sys.executable, "-c", plain], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    code = ("import os; from tapcore.runtime import configure_process; configure_process(); "
            "print(os.environ['THP_MEM_ALLOC_ENABLE'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "THP_MEM_ALLOC_ENABLE": "0"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
