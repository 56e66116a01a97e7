"""Files and folders ftzoo writes atomically get the permissions ``open()``/``mkdir()`` would
give them (the user's umask), not the private ones of ``mkstemp``/``mkdtemp``."""

from __future__ import annotations

import os
import stat

import pytest

from zoo.outputs import atomic_file, temporary_folder


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_an_atomic_file_is_readable_by_others_as_an_open_file_is(tmp_path, umask_022):
    with atomic_file(tmp_path / "results.json") as handle:
        handle.write("{}\n")
    with open(tmp_path / "plain.json", "w") as handle:
        handle.write("{}\n")
    mode = stat.S_IMODE((tmp_path / "results.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644
    assert (tmp_path / "results.json").read_text() == "{}\n"


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "out.json") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_folder_has_the_permissions_of_mkdir(tmp_path, umask_022):
    folder = temporary_folder(tmp_path / "adapter")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
