"""A store commit is durable: the update's files (its adapter above all) are on disk, fsynced, before state.json,
which names them, is replaced; so a power loss can never leave state.json pointing at an empty adapter.

The order is observed with a spy around the real `os.fsync` (it records which file each call flushed, then flushes
it): nothing about the commit is faked.
"""

import json
import os
from pathlib import Path

import pytest

from core.rundir import fsync_tree
from tests.test_store import load_state, run_cli, update_args, write_docs

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced files via /proc")


@pytest.fixture
def fsynced(monkeypatch):
    """The paths flushed by os.fsync, in order, for as long as the test runs."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_fsync_tree_flushes_every_file_and_folder_of_a_tree(tmp_path, fsynced):
    root = tmp_path.resolve() / "tree"
    (root / "a" / "b").mkdir(parents=True)
    files = [root / "top.txt", root / "a" / "mid.bin", root / "a" / "b" / "deep.json"]
    for f in files:
        f.write_text(f.name)
    fsync_tree(root)
    expected = {str(p) for p in (*files, root, root / "a", root / "a" / "b")}
    assert set(fsynced) == expected and len(fsynced) == len(expected)
    # Children before their folder: a folder's entries are flushed once what they point at is.
    order = {p: i for i, p in enumerate(fsynced)}
    assert order[str(root / "a" / "b" / "deep.json")] < order[str(root / "a" / "b")] < order[str(root / "a")] \
        < order[str(root)]

    fsynced.clear()
    fsync_tree(root / "top.txt")  # a single file is flushed alone
    assert fsynced == [str(root / "top.txt")]


def test_a_committed_update_is_on_disk_before_state_json_names_it(tiny_models, tmp_path, capsys, fsynced):
    from core.adapters import verify_adapter

    store = tmp_path.resolve() / "store"
    docs, q, e = write_docs(tmp_path / "docs", ["velmora", "kaldor"])
    code, _, err = run_cli(update_args(store, docs, q, e, tiny_models["llama"]), capsys)
    assert code == 0, err

    (update,) = load_state(store)["updates"]
    folder = store / "updates" / f"{update['number']:04d}"
    adapter = folder / "adapter"
    # state.json names an update whose adapter is whole: its tensors read back, its base is the store's student
    assert update["accepted"] and verify_adapter(adapter)
    base = json.loads((adapter / "seal_tt_base.json").read_text())
    assert base["path"] == str(tiny_models["llama"]) and base["sha256"]

    # every file of the update was flushed (under its staging name) before state.json's new copy was written
    state_at = max(i for i, p in enumerate(fsynced) if Path(p).name.startswith(".state.json."))
    staged = store / ".pending" / "staged"
    flushed_before = {Path(p).relative_to(staged).as_posix() for p in fsynced[:state_at]
                      if Path(p).is_relative_to(staged)}
    committed = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    assert committed and committed <= flushed_before and "." in flushed_before
    # and the rename of the folder into updates/ was flushed too
    assert str(store / "updates") in fsynced[:state_at]
