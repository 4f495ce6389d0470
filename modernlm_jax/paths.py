"""One path type for every file a run shares: local folders and `gs://` (also s3://, az://, hf://) alike.

`path(p)` returns an `etils.epath.Path`, the path type orbax itself uses, so checkpoints, the tokenizer,
metrics, reports and eval outputs go through the same client: local paths are plain files; `gs://` goes
through fsspec/gcsfs (orbax writes its array data through tensorstore's own GCS driver). Per-host scratch
(token cache, compilation cache) stays local and does not use this module.

Emulators: `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` points gcsfs at a local GCS emulator; tensorstore
reads `TENSORSTORE_GCS_HTTP_URL`, which `path()` fills from the former when unset, so one setting serves both.

Tools that only write local files (tensorboardX's event files) and files that grow by appending
(metrics.jsonl; object stores cannot append) write into a `LocalMirror` that uploads them to the run
folder at most every few seconds and on close.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Union

from etils import epath

Path = epath.Path
# One gs:// client everywhere (gcsfs: what check_access checks and emulators serve). etils would otherwise switch
# to tf.io.gfile whenever TensorFlow happens to be installed; it reads this once, at its first path operation.
os.environ.setdefault("EPATH_USE_TF", "false")
PathLike = Union[str, os.PathLike]

AUTH_HELP = (
  "authenticate with `gcloud auth application-default login` (a workstation), or set "
  "GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account-key.json; on a TPU VM or GCE host the VM's "
  "service account is used and needs Storage Object Admin on the bucket; for a local emulator set "
  "STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT"
)


class StorageAccessError(RuntimeError):
  pass


def is_remote(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def _configure_clients() -> None:
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator and not os.environ.get("TENSORSTORE_GCS_HTTP_URL"):
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = emulator if "://" in emulator else f"http://{emulator}"


def path(p: PathLike) -> Path:
  """`p` as an epath.Path: URIs as given, local paths with ~ expanded and made absolute (orbax needs absolute
  paths, and a relative one would change meaning if the working directory did)."""
  s = os.fspath(p)
  if is_remote(s):
    _configure_clients()
    logging.getLogger("gcsfs").setLevel(logging.ERROR)  # it warns on every open that bucket-type probes need auth
    return Path(s)
  return Path(os.path.abspath(os.path.expanduser(s)))


def bucket_of(p: PathLike) -> str:
  return os.fspath(p).split("://", 1)[1].split("/", 1)[0]


def check_access(p: PathLike) -> None:
  """Before any work: a gs:// location needs credentials and an existing bucket. Fails in about a second
  without credentials, naming the bucket and how to authenticate; writes nothing (locally or remotely)."""
  s = os.fspath(p)
  if not s.startswith("gs://"):
    return
  bucket = bucket_of(s)
  try:
    import gcsfs
  except ImportError:
    raise StorageAccessError(
      f"--workdir={s} is on Google Cloud Storage, which needs gcsfs: pip install -e '.[gcs]'"
    ) from None
  path(s)  # emulator settings for tensorstore, quiet gcsfs
  if not os.environ.get("STORAGE_EMULATOR_HOST"):
    import google.auth
    import google.auth.exceptions

    try:
      google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    except google.auth.exceptions.GoogleAuthError as e:
      raise StorageAccessError(
        f"cannot use bucket gs://{bucket} (for {s}): no Google Cloud credentials found "
        f"({type(e).__name__}); {AUTH_HELP}"
      ) from None
  try:  # one object listed at most: cheap on a bucket of any size, and needs only object-list permission
    gcsfs.GCSFileSystem().call("GET", "b/{}/o", bucket, maxResults=1, json_out=True)
  except FileNotFoundError:
    raise StorageAccessError(
      f"bucket gs://{bucket} (for {s}) does not exist or is not visible with these "
      f"credentials; create it (gcloud storage buckets create gs://{bucket}) or fix the "
      f"path. {AUTH_HELP}"
    ) from None
  except Exception as e:  # noqa: BLE001 - permission and transport errors all mean the run cannot write there
    raise StorageAccessError(
      f"cannot list bucket gs://{bucket} (for {s}): {type(e).__name__}: {str(e)[:300]}; {AUTH_HELP}"
    ) from None


def write_bytes_atomic(p: PathLike, data: bytes) -> None:
  """Readers never see a partial file: locally a temporary file renamed into place; an object store commits
  an object only when its upload completes."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_bytes(data)
    return
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
  tmp.write_bytes(data)
  os.replace(tmp, target)


def write_text_atomic(p: PathLike, text: str) -> None:
  write_bytes_atomic(p, text.encode("utf-8"))


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies the files under `src` into `dst` (either side local or remote), overwriting same-named files."""
  src, dst = path(src), path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      (dst / child.name).write_bytes(child.read_bytes())


class LocalMirror:
  """A local folder standing in for the run folder `target`. Local targets are used directly (no copy);
  for remote ones, files written here are uploaded by `sync()`, at most every `interval_s` seconds unless
  forced; `pull(name)` first brings an existing remote file down, so an appended log continues on resume."""

  def __init__(self, target: PathLike, *, interval_s: float = 30.0):
    self.target = path(target)
    self.remote = is_remote(self.target)
    self.interval_s = interval_s
    self._last = time.monotonic()  # the first upload waits an interval too (monotonic time is not 0-based)
    self._uploaded: dict[str, tuple[int, float]] = {}
    if self.remote:
      self.local = Path(tempfile.mkdtemp(prefix="modernlm_mirror_"))
    else:
      self.local = self.target
      self.local.mkdir(parents=True, exist_ok=True)

  def pull(self, name: str) -> None:
    if self.remote and (self.target / name).exists():
      dest = self.local / name
      dest.parent.mkdir(parents=True, exist_ok=True)
      dest.write_bytes((self.target / name).read_bytes())
      self._uploaded[name] = self._signature(dest)

  @staticmethod
  def _signature(p: Path) -> tuple[int, float]:
    st = os.stat(os.fspath(p))
    return st.st_size, st.st_mtime

  def sync(self, *, force: bool = False) -> None:
    if not self.remote or (not force and time.monotonic() - self._last < self.interval_s):
      return
    self._last = time.monotonic()
    for d, _, files in os.walk(os.fspath(self.local)):
      for f in files:
        local = os.path.join(d, f)
        rel = os.path.relpath(local, os.fspath(self.local))
        sig = self._signature(Path(local))
        if self._uploaded.get(rel) != sig:
          out = self.target / rel
          out.parent.mkdir(parents=True, exist_ok=True)
          with open(local, "rb") as fh:
            out.write_bytes(fh.read())
          self._uploaded[rel] = sig

  def close(self) -> None:
    self.sync(force=True)
    if self.remote:
      shutil.rmtree(os.fspath(self.local), ignore_errors=True)
