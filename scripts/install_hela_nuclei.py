"""Install the hela-nuclei model that ``bench/gpu_suite.py`` returns as two zips into ``models/hela-nuclei/``.

The GPU suite writes the TAP + A1 head + calibration bundle trained on hela01 in the shipped layout
(``hela-nuclei/`` = event-head bundle with ``calibration.json``, ``README.md``,
``training_record.json``; ``hela-nuclei/tap/`` = its TAP bundle) and splits it into
``hela_nuclei_head.zip`` and ``hela_nuclei_tap.zip`` (a device run returns files of at most 16 MiB).
This script checks both zips (only ``hela-nuclei/...`` names, no absolute or ``..`` paths), unpacks
them into a staging folder, loads both bundles (weights hash against the manifest, calibration), and
only then replaces ``models/hela-nuclei``. The model is then ``shipped:hela-nuclei`` in the app and
the CLI.

Usage::

    python scripts/install_hela_nuclei.py /work/.device/.../hela_nuclei_head.zip /work/.device/.../hela_nuclei_tap.zip
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
NAME = "hela-nuclei"


def _safe_members(z: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in z.infolist():
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != NAME:
            raise ValueError(f"{source} holds {info.filename!r}: expected only {NAME}/... entries "
                             "(the zips written by bench/gpu_suite.py)")
        members.append(info)
    return members


def install(zips: list[Path], dest: Path) -> dict:
    """Unpack ``zips`` into ``dest`` (replaced only when both bundles load); returns a summary."""
    sys.path.insert(0, str(ROOT))
    from tapcore.bundle import load_bundle
    from tapcore.calibration import calibration_from_dict

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.install-", dir=dest.parent))
    try:
        for path in zips:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path} not found: give the zips a GPU suite run returned")
            with zipfile.ZipFile(path) as z:
                for info in _safe_members(z, Path(path)):
                    z.extract(info, stage)
        root = stage / NAME
        head = load_bundle(root, "event_head")
        tap = load_bundle(root / "tap", "tap")
        calib = json.loads((root / "calibration.json").read_text()) if (root / "calibration.json").is_file() else None
        if calib is None:
            raise ValueError("the zips hold no calibration.json: the suite's A1 head was not calibrated")
        calibration_from_dict(calib)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(root, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(root, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"installed": str(dest), "bytes": size, "mib": round(size / 2**20, 2),
            "head_bundle_id": head.manifest.get("bundle_id"), "tap_bundle_id": tap.manifest.get("bundle_id"),
            "temperature": calib.get("temperature"), "bias": calib.get("bias")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("zips", nargs="+", help="hela_nuclei_head.zip and hela_nuclei_tap.zip from a GPU suite run")
    p.add_argument("--dest", default=str(ROOT / "models" / NAME), help="default: models/hela-nuclei")
    args = p.parse_args(argv)
    try:
        print(json.dumps(install([Path(z) for z in args.zips], Path(args.dest))))
    except (FileNotFoundError, ValueError, zipfile.BadZipFile) as exc:
        print(f"install_hela_nuclei: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
