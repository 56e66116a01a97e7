"""Fixtures for the distributed tests: training data whose loss normalisation is comparable
across batch layouts, and records of different lengths for the sharding checks.

This folder is put on ``sys.path`` (and on the ``PYTHONPATH`` of launched ranks, see
``dist_runs.launch``) so that tests and ranks import ``dist_runs``, ``dist_probes`` and
``cpu_fsdp`` by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from dist_runs import write_jsonl


@pytest.fixture(scope="session")
def equal_length_data(tmp_path_factory) -> Path:
    """64 addition problems whose prompts and answers have the same length in characters, so in
    tokens for the byte-level test tokenizer: every micro-batch then has the same number of
    supervised tokens, and the mean loss of 2 ranks x b records equals that of 1 x 2b."""
    rows = []
    for i in range(64):
        a, b = (37 * i + 11) % 100, (53 * i + 29) % 100
        rows.append({"instruction": f"Add {a:02d} and {b:02d}.", "output": f"{a + b:03d}"})
    return write_jsonl(tmp_path_factory.mktemp("data") / "add.jsonl", rows)


@pytest.fixture(scope="session")
def varied_length_data(tmp_path_factory) -> Path:
    """13 records of different lengths (13 is odd: 2 ranks need one record twice per epoch)."""
    rows = [{"instruction": f"Repeat {'x' * (3 * i)} #{i}.", "output": f"{'y' * (i % 5)}{i}"} for i in range(13)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "varied.jsonl", rows)
