"""Fault 8: several saves race on one adapter folder (two runs given the same ``adapter_dir``).

| case                                        | what the user sees   | kept on disk                                       |
| ------------------------------------------- | -------------------- | -------------------------------------------------- |
| 4 threads x 25 saves of different adapters  | every save succeeds  | one complete adapter (one of those saved); no      |
|                                             |                      | ``.adapter.tmp-*`` or ``.adapter.old-*`` left      |
| 2 processes x 25 saves                      | the same             | the same                                           |
| a save fails while swapping folders         | its error            | the previous adapter, whole                        |
| a reader loads the adapter while 2          | every load succeeds  | each load is one complete adapter (readers take a  |
| processes replace it 25 times each, and     | (no raw              | shared lock; a swap waits for them, they for it)   |
| asks whether it is there, as a server's     | FileNotFoundError);  |                                                    |
| ``adapter_folder`` lookup does              | it is always there   |                                                    |
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from zoo import adapter as adapter_module
from zoo.adapter import is_adapter_folder, load_adapter, save_adapter

SAVES = 25


def variants(tiny, count: int):
    """``count`` copies of one small adapter, told apart by a marker value."""
    base = tiny.adapter("sparse")
    out = []
    for i in range(count):
        tensors = {k: v.clone() for k, v in base.tensors.items()}
        key = next(k for k in tensors if k.endswith("mask_values"))
        tensors[key][0] = float(i)
        out.append((type(base)(base.method, base.config, base.selection, base.base, tensors), key))
    return out


def assert_one_complete_adapter(parent, folder, markers: set[float], key: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == [folder.name]
    assert float(load_adapter(folder).tensors[key][0]) in markers


def test_threads_saving_to_one_folder(tiny, tmp_path):
    saved = variants(tiny, 4)
    folder = tmp_path / "adapter"

    def writer(i: int) -> None:
        for _ in range(SAVES):
            save_adapter(saved[i][0], folder)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))  # re-raises any writer's error
    assert_one_complete_adapter(tmp_path, folder, {0.0, 1.0, 2.0, 3.0}, saved[0][1])


def _process_writer(adapter, folder, errors) -> None:
    try:
        for _ in range(SAVES):
            save_adapter(adapter, folder)
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        errors.put(repr(err))


def test_processes_saving_to_one_folder(tiny, tmp_path):
    saved = variants(tiny, 2)
    folder = tmp_path / "adapter"
    context = multiprocessing.get_context("spawn")  # every platform has it
    errors = context.Queue()
    workers = [context.Process(target=_process_writer, args=(a, folder, errors)) for a, _ in saved]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert errors.empty(), errors.get()
    assert_one_complete_adapter(tmp_path, folder, {0.0, 1.0}, saved[0][1])


def test_a_failed_swap_keeps_the_previous_adapter(tiny, tmp_path, monkeypatch):
    (first, key), (second, _) = variants(tiny, 2)
    folder = save_adapter(first, tmp_path / "adapter")
    rename = adapter_module.Path.rename

    def fail_into_target(self, target):
        if str(target) == str(folder) and ".tmp-" in self.name:
            raise OSError("simulated failure while moving the new adapter into place")
        return rename(self, target)

    monkeypatch.setattr(adapter_module.Path, "rename", fail_into_target)
    with pytest.raises(OSError, match="simulated"):
        save_adapter(second, folder)
    monkeypatch.undo()
    assert_one_complete_adapter(tmp_path, folder, {0.0}, key)
    assert torch.equal(load_adapter(folder).tensors[key], first.tensors[key])


def test_a_reader_never_sees_an_adapter_being_replaced(tiny, tmp_path):
    saved = variants(tiny, 2)
    key = saved[0][1]
    folder = save_adapter(saved[0][0], tmp_path / "adapter")
    context = multiprocessing.get_context("spawn")  # every platform has it
    errors = context.Queue()
    workers = [context.Process(target=_process_writer, args=(a, folder, errors)) for a, _ in saved]
    for worker in workers:
        worker.start()
    loads, failures = 0, []
    while any(w.is_alive() for w in workers) or loads < 50:
        try:
            loaded = load_adapter(folder)
            assert float(loaded.tensors[key][0]) in {0.0, 1.0} and set(loaded.tensors) == set(saved[0][0].tensors)
            assert is_adapter_folder(folder), "the adapter was missing"  # a server's adapter_folder lookup
        except Exception as err:  # noqa: BLE001 - counted, then reported
            failures.append(repr(err))
        loads += 1
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0] and errors.empty()
    assert failures == [], f"{len(failures)} of {loads} loads failed: {failures[:3]}"
