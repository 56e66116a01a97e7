"""Where the repository and the shared reasoning data are, for tests (importable by name)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REASONING_DATA = Path(os.environ.get("FTZOO_REASONING_DATA", REPO.parent / "shared" / "data" / "reasoning"))
