"""The shared data substrate: step-indexed iterator base and file helpers."""

import gzip

import numpy as np
import pytest

from modernlm_jax.data import files
from modernlm_jax.data.iterator import StepIndexedIterator, check_batching


class Rows(StepIndexedIterator):
  def batch_at(self, step):
    return {"rows": self.host_rows(step)}


def test_processes_read_disjoint_contiguous_blocks_of_each_global_batch():
  hosts = [Rows(global_batch_size=6, process_index=i, process_count=3, fingerprint={"seed": 0}) for i in range(3)]
  step2 = np.concatenate([h.batch_at(2)["rows"] for h in hosts])
  np.testing.assert_array_equal(step2, np.arange(12, 18))
  it = hosts[1]
  assert [next(it)["rows"].tolist() for _ in range(2)] == [[2, 3], [8, 9]] and it.step == 2


def test_state_round_trips_and_a_changed_fingerprint_is_refused():
  a = Rows(global_batch_size=4, process_index=0, process_count=1, fingerprint={"seed": 0})
  next(a), next(a), next(a)
  b = Rows(global_batch_size=4, process_index=0, process_count=1, fingerprint={"seed": 0})
  b.set_state(a.get_state())
  assert b.step == 3 and next(b)["rows"].tolist() == [12, 13, 14, 15]
  c = Rows(global_batch_size=4, process_index=0, process_count=1, fingerprint={"seed": 1})
  with pytest.raises(ValueError, match="same seed"):
    c.set_state(a.get_state())


@pytest.mark.parametrize(
  "args,expected",
  [
    ((5, 0, 2), "not divisible by process_count=2"),
    ((4, 2, 2), r"process_index 2 must be in \[0, 2\)"),
    ((0, 0, 1), "must be positive"),
  ],
)
def test_bad_batching_is_named(args, expected):
  with pytest.raises(ValueError, match=expected):
    check_batching(*args)


def test_open_text_reads_gzip_and_plain_alike_and_glob_errors_name_the_pattern(tmp_path):
  (tmp_path / "a.txt").write_text("héllo")
  with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
    f.write("héllo")
  paths = files.expand_glob(str(tmp_path / "*"))
  assert [files.open_text(p).read() for p in paths] == ["héllo", "héllo"]
  with pytest.raises(FileNotFoundError, match="no files match the data pattern"):
    files.expand_glob(str(tmp_path / "*.nope"))
  with pytest.raises(ValueError, match="is a directory"):
    files.expand_glob(str(tmp_path))
  assert files.content_hash("x") == files.content_hash("x") != files.content_hash("y")
