"""The kernel build's housekeeping (kernels/build.py), without compiling anything."""

import os
import time

import pytest

from specdecode.kernels import build


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """torch's loader waits for ever on the `lock` a killed build leaves behind: an old one goes
    (with a warning), a recent one (a build under way in another process) stays."""
    lock = tmp_path / "lock"
    lock.touch()
    assert not build.clear_stale_lock(tmp_path)
    assert lock.exists()
    old = time.time() - build.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="build lock"):
        assert build.clear_stale_lock(tmp_path)
    assert not lock.exists()
    assert not build.clear_stale_lock(tmp_path)  # no lock: nothing to do
