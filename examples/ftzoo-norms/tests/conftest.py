"""Import the plugin from ``src/`` when the package is not installed (``pip install -e .`` makes this a no-op)."""

import sys
from pathlib import Path

try:
    import ftzoo_norms  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
