"""No run destroys another's checkpoints: the --save checks, stale .tmp clean-up, pruning, saving over iter_N.

Pure file-system tests on hand-made save folders (checkpoint/save_dir.py, checkpoint/layout.py).
"""

import json
import os

import pytest

from megatron_dllm.checkpoint import save_dir
from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.layout import TRACKER, iterations


def _checkpoint(root, iteration, lineage="A", finite=None, tracker=True):
    folder = root / f"iter_{iteration:07d}"
    folder.mkdir(parents=True)
    meta = {"iteration": iteration, "lineage": lineage}
    if finite is not None:
        meta["finite"] = finite
    (folder / "dllm_meta.json").write_text(json.dumps(meta))
    (folder / "__0_0.distcp").write_bytes(b"x" * 8)
    if tracker:
        (root / TRACKER).write_text(str(iteration))
    return folder


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_fresh_run_into_a_save_with_checkpoints_is_refused_and_nothing_is_touched(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 10)
    _checkpoint(save, 20)
    before = _tree(save)
    for load in (None, str(tmp_path / "cktp"), str(tmp_path / "other")):  # none, misspelt, another run
        with pytest.raises(CheckpointError) as err:
            save_dir.check_save_dir(str(save), load)
        assert str(err.value) == (f"--save {save} already holds checkpoints (iterations 10, 20) that this run does "
                                  f"not resume: resume them with --load {save}, or choose a new --save folder")
    with pytest.raises(CheckpointError, match="--finetune restarts at iteration 0: choose a new --save folder"):
        save_dir.check_save_dir(str(save), str(save), finetune=True)
    assert _tree(save) == before


def test_resume_into_the_same_folder_is_allowed(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 10)
    save_dir.check_save_dir(str(save), str(save))
    (tmp_path / "link").symlink_to(save)
    save_dir.check_save_dir(str(save), str(tmp_path / "link"))      # the same folder by another path
    save_dir.check_save_dir(str(tmp_path / "new"), str(save))       # a new --save is always fine
    save_dir.check_save_dir(str(tmp_path / "empty"), None)


def test_folders_without_a_tracker_count_as_checkpoints(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 10, tracker=False)    # killed between the rename and the first tracker write
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        save_dir.check_save_dir(str(save), None)
    save_dir.check_save_dir(str(save), str(save))  # resuming it is allowed (iter_10 is moved aside later)


def test_save_naming_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match=r"^--save .*/f is a file, not a folder: choose a folder path"):
        save_dir.check_save_dir(str(tmp_path / "f"), None)
    with pytest.raises(CheckpointError, match=r"^--save .*/f/sub: .*/f is a file, not a folder"):
        save_dir.check_save_dir(str(tmp_path / "f" / "sub"), None)


def test_stale_tmp_folders_are_cleaned(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 10)
    (save / "iter_0000020.tmp" / "rng").mkdir(parents=True)
    (save / (TRACKER + ".tmp")).write_text("20")
    (save / "notes.tmp").write_text("not ours")
    assert save_dir.clean_stale(str(save)) == ["iter_0000020.tmp", TRACKER + ".tmp"]
    assert sorted(os.listdir(save)) == ["iter_0000010", TRACKER, "notes.tmp"]


def test_prune_keeps_the_tracker_the_last_finite_and_other_lineages(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 5, lineage="B")            # another run's: never pruned by lineage A
    _checkpoint(save, 10)
    _checkpoint(save, 20)
    _checkpoint(save, 30, finite=False)
    _checkpoint(save, 40, finite=False)          # the tracker names 40
    assert save_dir.prune(str(save), 1, "A") == [10, 30]
    assert iterations(str(save)) == [5, 20, 40]  # 40: the tracker's; 20: the newest finite one
    assert save_dir.prune(str(save), 0, "A") == []


def test_prune_never_deletes_the_tracker_iteration_even_when_it_is_not_the_newest(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 30)
    _checkpoint(save, 40)
    _checkpoint(save, 20)                        # tracker 20 (e.g. a resumed run re-saving an older step)
    assert save_dir.prune(str(save), 1, "A") == [30]
    assert iterations(str(save)) == [20, 40]


def test_saving_over_an_existing_iteration_moves_it_aside_first(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 10, lineage="B")
    aside, ours = save_dir.make_room(str(save), 10, "A")
    assert (os.path.basename(aside), ours) == ("iter_0000010.superseded-0", False)  # another run's: kept
    assert json.loads((save / "iter_0000010.superseded-0" / "dllm_meta.json").read_text())["lineage"] == "B"
    _checkpoint(save, 20, lineage="A")
    aside, ours = save_dir.make_room(str(save), 20, "A")
    assert (os.path.basename(aside), ours) == ("iter_0000020.superseded-0", True)   # ours: deletable
    assert not (save / "iter_0000020").exists()
    assert save_dir.make_room(str(save), 30, "A") is None


def test_tool_output_left_by_a_killed_writer_is_removed_on_the_next_write(tmp_path):
    import subprocess

    from megatron_dllm.checkpoint.output import atomic_directory

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "converted"
    (tmp_path / f"converted.tmp-{dead.pid}").mkdir()      # a conversion killed with -9
    (tmp_path / f"converted.tmp-{os.getppid()}").mkdir()  # a writer that still runs: left alone
    with atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "f"), "w").close()
    assert sorted(os.listdir(tmp_path)) == ["converted", f"converted.tmp-{os.getppid()}"]
