"""Ctrl-C stops the server: its process and its workers exit within seconds, not at a kill."""

from __future__ import annotations

import signal
import subprocess
import time

from zoo.adapter import save_adapter
from zoo.server.process import ServerProcess


def test_ctrl_c_stops_the_server_and_its_workers(tiny, tmp_path):
    folder = save_adapter(tiny.adapter("lora", 0), tmp_path / "lora")
    server = ServerProcess(["--adapters", f"[lora={folder}]", "--threads", "1"])
    server.start()
    try:
        server.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        server.proc.wait(timeout=30)
        seconds = time.monotonic() - started
    except subprocess.TimeoutExpired:
        seconds = float("inf")
    finally:
        server.stop(timeout=1)
    assert seconds < 15, f"the server took {seconds:.1f} s to stop after SIGINT"
