"""Where a model comes from: the data's fingerprint, the code's commit, the simulator profile."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from features.ascertainment import EXPORT_METADATA_FILE
from features.schema import TABLES
from features.io import find_table_file


def data_fingerprint(raw_dir: Path) -> str:
    """SHA-256 over the raw table files (name and bytes, in contract order), then
    ``export.yaml`` when there is one (it decides the labels)."""
    h = hashlib.sha256()
    for name in (*TABLES, EXPORT_METADATA_FILE):
        path = find_table_file(raw_dir, name) if name in TABLES else raw_dir / name
        if path is None or not path.is_file():
            continue
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """Commit of the code (with '+dirty' if there are uncommitted changes), or a note."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "none (no commit yet)"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_profile(raw_dir: Path) -> str:
    """Simulator profile named in ``simulation.json`` ('unknown' if truth exists without it;
    'none' for a real export)."""
    meta = raw_dir / "simulation.json"
    if meta.exists():
        try:
            return str(json.loads(meta.read_text(encoding="utf-8")).get("profile", "unknown"))
        except (OSError, ValueError):
            return "unknown"
    return "unknown" if (raw_dir / "truth.parquet").exists() else "none"
