"""JAX's persistent compilation cache in a per-host local folder (`train.compilation_cache_dir`).

A restarted job (after preemption, or the next stage on the same host) loads its compiled programs instead
of compiling them again. "auto" (the default) is `$XDG_CACHE_HOME/modernlm_jax/jax_compilation_cache/<host>`
(`~/.cache/...`; the host name keeps it per host even where home folders are shared over NFS); an empty
string turns the cache off. It stays on local disk, never in the run's bucket: compiled programs are
specific to the host's devices, and every start would otherwise wait on remote reads.
Hits, misses and the time spent compiling are counted and logged when the job ends.
"""

from __future__ import annotations

import logging
import os
import socket

import jax

_STATS = {"hits": 0, "misses": 0, "compile_s": 0.0, "saved_s": 0.0}
_listening = False


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "modernlm_jax", "jax_compilation_cache", socket.gethostname() or "host")


def resolve_dir(setting: str) -> str | None:
  """The cache folder for a `train.compilation_cache_dir` value; None when off."""
  setting = str(setting).strip()
  if not setting:
    return None
  if "://" in setting:
    raise ValueError(
      f"train.compilation_cache_dir={setting!r} must be a local folder (a per-host cache); "
      "use a path on the host's disk, or '' to turn the cache off"
    )
  return default_dir() if setting == "auto" else os.path.abspath(os.path.expanduser(setting))


def _on_event(event: str, **_) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _STATS["hits"] += 1
    if _STATS["hits"] == 1:
      logging.info("persistent compilation cache hit: loading compiled programs instead of compiling")
  elif event == "/jax/compilation_cache/cache_misses":
    _STATS["misses"] += 1


def _on_duration(event: str, seconds: float, **_) -> None:
  if event == "/jax/core/compile/backend_compile_duration":
    _STATS["compile_s"] += seconds
  elif event == "/jax/compilation_cache/compile_time_saved_sec":
    _STATS["saved_s"] += seconds


def setup(setting: str) -> str | None:
  """Turns the cache on in the folder `setting` names (before anything is compiled); returns the folder."""
  global _listening
  if not _listening:  # counts compile time with or without a cache, so cold and warm starts compare
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True
  folder = resolve_dir(setting)
  if folder is None:
    logging.info("persistent compilation cache off (train.compilation_cache_dir='')")
    return None
  os.makedirs(folder, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", folder)
  # Cache every program that took noticeable time to compile, however small its binary.
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.info("persistent compilation cache: %s", folder)
  return folder


def stats() -> dict:
  return dict(_STATS)


def log_stats() -> None:
  s = _STATS
  logging.info(
    "compilation: %.1f s compiling or loading programs; persistent cache %d hits, %d misses "
    "(%.1f s of compilation saved)",
    s["compile_s"],
    s["hits"],
    s["misses"],
    s["saved_s"],
  )
