"""Tests for `rnnjax.Checkpointer`: damaged checkpoints and checkpoints of another model.

The reference is what was saved: each checkpoint holds arrays filled with its step
number, so the step a restore fell back to is read off the values. Damaged files
are compared byte for byte with a snapshot taken right after the damage.
"""

import gc
import os
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax

STEPS = (2, 4, 6)
LIKE = {"w": jnp.zeros((3,)), "b": {"c": jnp.zeros((2, 2))}}


def _tree(step: int) -> dict:
  return {"w": jnp.full((3,), float(step)), "b": {"c": jnp.full((2, 2), -float(step))}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> pathlib.Path:
  """Three intact checkpoints, of steps 2, 4 and 6, each with `meta={"step": step}`."""
  directory = tmp_path_factory.mktemp("saved") / "ckpt"
  ckpt = rnnjax.Checkpointer(directory, keep=5)
  for step in STEPS:
    ckpt.save(step, _tree(step), meta={"step": step})
  ckpt.close()
  return directory


@pytest.fixture
def ckpt_dir(saved, tmp_path) -> pathlib.Path:
  directory = tmp_path / "ckpt"
  shutil.copytree(saved, directory)
  return directory


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _data_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The file that holds the arrays (OCDBT's data file of the state)."""
  return next((step_dir / "state" / "d").iterdir())


def _damage(step_dir: pathlib.Path, how: str, which: str) -> None:
  path = {"meta": step_dir / "meta" / "metadata",
          "tree": step_dir / "state" / "_METADATA",
          "manifest": step_dir / "state" / "manifest.ocdbt",
          "arrays": _data_file(step_dir),
          "array_metadata": step_dir / "state" / "array_metadatas" / "process_0"}[which]
  if how == "truncate":
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  elif how == "garble":
    path.write_bytes(b"\x00\xffnot what orbax wrote\xfe" * 4)
  else:
    path.unlink()


def _restore(directory, like=LIKE, step=None):
  """`Checkpointer(directory).restore_with_meta(like, step)` and the warnings it gave."""
  ckpt = rnnjax.Checkpointer(directory, keep=2)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      tree, meta = ckpt.restore_with_meta(like, step)
  finally:
    ckpt.close()
  return tree, meta, [str(w.message) for w in caught]


def _assert_is_step(tree: dict, step: int) -> None:
  np.testing.assert_array_equal(tree["w"], np.full((3,), float(step)))
  np.testing.assert_array_equal(tree["b"]["c"], np.full((2, 2), -float(step)))


@pytest.mark.parametrize("how", ["truncate", "garble", "delete"])
@pytest.mark.parametrize("which", ["meta", "tree", "manifest", "arrays", "array_metadata"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_and_kept(ckpt_dir, how, which):
  _damage(ckpt_dir / "6", how, which)
  if (which, how) == ("array_metadata", "delete"):
    # orbax does without this file: the checkpoint is still intact and restores as it is.
    tree, meta, caught = _restore(ckpt_dir)
    _assert_is_step(tree, 6)
    assert meta == {"step": 6} and caught == []
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "6"]
    return
  damaged = _snapshot(ckpt_dir / "6")
  tree, meta, caught = _restore(ckpt_dir)
  _assert_is_step(tree, 4)
  assert meta == {"step": 4}
  assert len(caught) == 1, caught
  assert f"damaged checkpoint {ckpt_dir / '6'} (" in caught[0]
  assert "restored step 4" in caught[0] and "6.damaged" in caught[0]
  assert "\n" not in caught[0] and len(caught[0]) < 500
  # Its files are all kept, byte for byte, out of orbax's reach.
  assert _snapshot(ckpt_dir / "6.damaged") == damaged
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "6.damaged"]


def test_junk_in_a_step_directory_is_skipped_and_kept(ckpt_dir):
  junk = ckpt_dir / "8"
  junk.mkdir()
  (junk / "notes.txt").write_text("not a checkpoint")
  tree, _, caught = _restore(ckpt_dir)
  _assert_is_step(tree, 6)
  assert len(caught) == 1 and str(junk) in caught[0]
  assert (ckpt_dir / "8.damaged" / "notes.txt").read_text() == "not a checkpoint"


def test_later_saves_keep_the_damaged_checkpoint_and_the_intact_ones(ckpt_dir):
  # Without setting it aside, orbax's keep policy would count the damaged step 6 as the
  # newest and delete the intact 2 and 4 first; saving step 6 again would fail.
  _damage(ckpt_dir / "6", "garble", "arrays")
  damaged = _snapshot(ckpt_dir / "6")
  ckpt = rnnjax.Checkpointer(ckpt_dir, keep=2)
  with pytest.warns(UserWarning, match="damaged checkpoint"):
    tree = ckpt.restore(LIKE)
  _assert_is_step(tree, 4)
  ckpt.save(5, _tree(5))
  ckpt.save(6, _tree(6))
  assert ckpt.all_steps() == [5, 6]
  _assert_is_step(ckpt.restore(LIKE), 6)
  ckpt.close()
  assert _snapshot(ckpt_dir / "6.damaged") == damaged


def test_a_second_damaged_copy_of_a_step_gets_its_own_name(ckpt_dir):
  (ckpt_dir / "6.damaged").mkdir()
  (ckpt_dir / "6.damaged" / "older").write_text("kept")
  _damage(ckpt_dir / "6", "delete", "manifest")
  _, _, caught = _restore(ckpt_dir)
  assert "6.damaged-2" in caught[0]
  assert (ckpt_dir / "6.damaged" / "older").read_text() == "kept"
  assert (ckpt_dir / "6.damaged-2" / "state").is_dir()


def test_when_every_checkpoint_is_damaged_one_error_names_them_and_nothing_moves(ckpt_dir):
  for step, which in zip(STEPS, ("meta", "manifest", "arrays"), strict=True):
    _damage(ckpt_dir / str(step), "truncate", which)
  before = _snapshot(ckpt_dir)
  with pytest.raises(rnnjax.CheckpointError) as info:
    _restore(ckpt_dir)
  err = info.value
  assert err.kind == "damaged" and err.path == ckpt_dir
  message = str(err)
  assert message.startswith("rnnjax.Checkpointer: every checkpoint in ")
  assert all(f"{step}: " in message for step in STEPS)
  assert "\n" not in message
  assert _snapshot(ckpt_dir) == before


def test_an_explicit_damaged_step_is_an_error_without_fallback(ckpt_dir):
  _damage(ckpt_dir / "4", "garble", "tree")
  before = _snapshot(ckpt_dir)
  with pytest.raises(rnnjax.CheckpointError, match=r"the checkpoint .*/4 is damaged") as info:
    _restore(ckpt_dir, step=4)
  assert info.value.kind == "damaged"
  assert _snapshot(ckpt_dir) == before
  _assert_is_step(_restore(ckpt_dir, step=2)[0], 2)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 .* steps \[2, 4, 6\]"):
    _restore(ckpt_dir, step=3)


@pytest.mark.parametrize("like, expected", [
    ({"w": jnp.zeros((4,)), "b": {"c": jnp.zeros((2, 2))}},
     "w has shape (3,) in the checkpoint but (4,) in `like`"),
    ({"w": jnp.zeros((3,)), "b": {"c": jnp.zeros((2, 2), jnp.int32)}},
     "b.c has dtype float32 in the checkpoint but int32 in `like`"),
    ({"w": jnp.zeros((3,))}, "the checkpoint has b.c, `like` does not"),
    ({**LIKE, "extra": jnp.zeros(1)}, "`like` has extra, the checkpoint does not"),
    ([jnp.zeros((3,)), jnp.zeros((2, 2))], "`like` has 0, the checkpoint does not"),
])
def test_another_model_is_refused_with_the_arrays_that_differ(ckpt_dir, like, expected):
  before = _snapshot(ckpt_dir)
  with pytest.raises(rnnjax.CheckpointError) as info:
    _restore(ckpt_dir, like=like)
  err = info.value
  assert err.kind == "mismatch" and err.path == ckpt_dir / "6"
  assert expected in str(err) and expected in err.detail
  # Our message, not orbax's (which names its own options).
  assert "partial_restore" not in str(err) and "ArrayRestoreArgs" not in str(err)
  assert _snapshot(ckpt_dir) == before


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("which", ["array_metadata", "arrays", "tree"])
def test_a_failed_read_prints_nothing(ckpt_dir, capfd, which):
  # A failed orbax read can leave coroutines whose "Exception ignored" tracebacks would
  # follow the one clear error on stderr, and orbax logs errors of its own.
  _damage(ckpt_dir / "6", "garble", which)
  tree, _, _ = _restore(ckpt_dir)
  _assert_is_step(tree, 4)
  gc.collect()
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Exception ignored" not in err, err


def test_typed_keys_and_python_scalars_restore_as_saved(tmp_path):
  ckpt = rnnjax.Checkpointer(tmp_path, keep=1)
  ckpt.save(1, {"key": jax.random.key(3), "lr": 0.5})
  restored = ckpt.restore({"key": jax.random.key(0), "lr": 0.0})
  ckpt.close()
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(jax.random.key(3)))
  assert restored["lr"] == 0.5


def test_a_directory_that_is_a_file_or_under_one_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("mine")
  for directory in (path, path / "ckpt"):
    with pytest.raises(rnnjax.CheckpointError, match="cannot be used as a directory"):
      rnnjax.Checkpointer(directory)
  assert path.read_text() == "mine"


@pytest.mark.parametrize("keep, error", [(0, ValueError), (-1, ValueError), ("3", TypeError),
                                          (2.0, TypeError), (True, TypeError)])
def test_bad_keep_is_refused(tmp_path, keep, error):
  with pytest.raises(error, match=r"rnnjax\.Checkpointer: `keep` must be"):
    rnnjax.Checkpointer(tmp_path, keep=keep)


# ---- Keeping the best by a metric (orbax's best_fn), as fit does in out_dir/best ----

LOSSES = {1: 3.0, 2: 1.0, 3: 4.0, 4: 0.5, 5: 2.0}


def _best_checkpointer(directory, mode="min"):
  ckpt = rnnjax.Checkpointer(directory, keep=2, best_metric="val/loss", best_mode=mode)
  for step, loss in LOSSES.items():
    ckpt.save(step, _tree(step), meta={"step": step}, metrics={"val/loss": loss, "other": -loss})
  return ckpt


@pytest.mark.parametrize("mode", ["min", "max"])
def test_with_a_best_metric_the_best_are_kept_and_restored_whatever_their_steps(tmp_path, mode):
  ckpt = _best_checkpointer(tmp_path, mode)
  ranked = sorted(LOSSES, key=LOSSES.get, reverse=mode == "max")  # best first
  assert ckpt.all_steps() == sorted(ranked[:2])
  assert ckpt.best_step() == ranked[0]
  _assert_is_step(ckpt.restore(LIKE), ranked[0])
  _assert_is_step(ckpt.restore(LIKE, step=ranked[1]), ranked[1])
  ckpt.close()


def test_a_damaged_best_checkpoint_falls_back_to_the_next_best_and_is_kept(tmp_path):
  _best_checkpointer(tmp_path).close()  # Keeps steps 2 (1.0) and 4 (0.5, the best).
  _damage(tmp_path / "4", "garble", "arrays")
  damaged = _snapshot(tmp_path / "4")
  ckpt = rnnjax.Checkpointer(tmp_path, keep=2, best_metric="val/loss")
  with pytest.warns(UserWarning, match=r"damaged checkpoint .*/4 .*restored step 2 instead"):
    _assert_is_step(ckpt.restore(LIKE), 2)
  assert _snapshot(tmp_path / "4.damaged") == damaged
  ckpt.close()


def test_a_best_checkpointer_needs_the_metric_and_a_mode(tmp_path):
  ckpt = rnnjax.Checkpointer(tmp_path / "a", best_metric="val/loss")
  with pytest.raises(ValueError, match=r"save\(\.\.\., metrics=\.\.\.\) must hold "
                     r"best_metric='val/loss'; got metrics=\{'loss': 1\.0\}"):
    ckpt.save(1, _tree(1), metrics={"loss": 1.0})
  assert ckpt.all_steps() == []
  ckpt.close()
  with pytest.raises(ValueError, match=r"`best_mode` must be 'min' or 'max', got 'low'"):
    rnnjax.Checkpointer(tmp_path / "b", best_metric="val/loss", best_mode="low")
