"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def token_cache_dir(tmp_path, monkeypatch) -> Path:
  """A fresh, empty token cache for one test (also set as $MODERNLM_CACHE)."""
  path = tmp_path / "cache"
  monkeypatch.setenv("MODERNLM_CACHE", str(path))
  return path


@pytest.fixture
def shared_data_dir() -> Path:
  """``../shared/data`` (or $MODERNLM_SHARED_DATA); skips the test when it is absent."""
  default = Path(__file__).resolve().parents[2] / "shared" / "data"
  path = Path(os.environ.get("MODERNLM_SHARED_DATA", default))
  if not path.is_dir():
    pytest.skip(f"shared data folder {path} is absent")
  return path
