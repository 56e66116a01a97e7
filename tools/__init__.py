"""Command-line tools: each module exposes one typed function, turned into a CLI by jsonargparse.

Run them as ``python tools/<tool>.py --help`` or ``python -m tools.<tool> --help`` from the
repository root; tests import the functions.
"""
