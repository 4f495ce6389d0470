"""A local Google Cloud Storage API for tests: the `gcp-storage-emulator` package, in memory on 127.0.0.1
(through tests/gcs_emulator_server.py, which adds a response header tensorstore needs).

`GcsEmulator` starts it in a child process (so clients in other processes reach it too) and returns the
environment that points every client at it: gcsfs/etils read STORAGE_EMULATOR_HOST, tensorstore (orbax's
array writer) reads TENSORSTORE_GCS_HTTP_URL. No credentials are needed or looked up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "gcs_emulator_server.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  def __init__(self, bucket: str, log_path: str):
    self.bucket = bucket
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = open(log_path, "w")  # a file, not a pipe: a full pipe would block the server
    self.proc = subprocess.Popen(
      [sys.executable, str(SERVER), "--port", str(self.port), "--bucket", bucket],
      stdout=self._log,
      stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
      try:
        urllib.request.urlopen(self.url + "/", timeout=2).read()
        break
      except OSError:
        if self.proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"the GCS emulator did not start; see {log_path}")
        time.sleep(0.2)

  @property
  def env(self) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(timeout=10)
    self._log.close()
    # gcsfs caches its file system (and so the endpoint) per process: drop it so later tests start clean.
    if "gcsfs" in sys.modules:
      sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
    for k in self.env:
      if os.environ.get(k) == self.env[k]:
        del os.environ[k]
