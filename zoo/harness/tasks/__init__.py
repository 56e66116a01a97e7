"""lm-eval task definitions (YAML) for the LLM-Adapters sets, read offline by :mod:`.utils`."""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
"""The folder to give lm-eval as ``include_path``."""
