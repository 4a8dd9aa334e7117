"""The tracking stack of scripts/tracking_stack.py (PostgreSQL + ``mlflow server``), imported
from the script itself so the tests start exactly what ``scripts/tracking-stack.sh`` starts."""

from __future__ import annotations

import importlib.util
import sys

from serving_support import ROOT


def load_stack_module():
    """scripts/tracking_stack.py as a module (scripts/ is not a package)."""
    name = "refracture_tracking_stack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "tracking_stack.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
