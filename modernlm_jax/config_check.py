"""One validation pass over a whole task config before any work (tokenizer training included).

Every problem found is reported at once, each naming its key, the value and the valid range, so a
bad setting fails in a second instead of after tokenizer training, far into training (a negative
learning rate, `top_p=0` turning every sampled id into 0) or inside XLA (float16). `main.py` calls
`check_config` before dispatching; `check_override_keys` turns a mistyped `--config.a.b=...` key into
an error listing the valid keys of its section.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

INF = math.inf
TRAINING_TASKS = ("pretrain", "sft", "dpo", "compare", "bench")
SUPPORTED_DTYPES = ("float32", "bfloat16")  # float16 fails inside XLA's CPU/TPU compilers (no fp16 loss scaling here)
TOKENIZER_KINDS = ("gpt2", "sentencepiece", "bytes")
TOKENIZER_IDS = {"bytes": 257, "gpt2": 50257}  # fixed vocabulary sizes (SentencePiece: tokenizer.vocab_size)


class ConfigError(ValueError):
  pass


class _Checker:
  def __init__(self):
    self.problems: list[str] = []

  def add(self, message: str) -> None:
    self.problems.append(message)

  def number(
    self,
    section,
    name: str,
    lo: float = -INF,
    hi: float = INF,
    *,
    lo_open=False,
    hi_open=False,
    integer=False,
    prefix: str = "",
    hint: str = "",
  ) -> float | None:
    """Checks `section[name]` (when present) lies in the range; returns it (None when absent or not a number)."""
    if section is None or name not in section:
      return None
    value = section[name]
    key = f"{prefix}{name}"
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
      self.add(f"{key}={value!r} must be {kind} in {_range(lo, hi, lo_open, hi_open)}")
      return None
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if not math.isfinite(value) or below or above:
      self.add(f"{key}={value!r} is out of range: valid is {_range(lo, hi, lo_open, hi_open)}{hint}")
      return None
    return value

  def choice(self, section, name: str, valid, *, prefix: str = "", hint: str = "") -> None:
    if section is not None and name in section and section[name] not in valid:
      self.add(f"{prefix}{name}={section[name]!r} is not valid; choose one of {list(valid)}{hint}")


def _range(lo, hi, lo_open, hi_open) -> str:
  def fmt(x):
    return ("-inf" if x < 0 else "inf") if math.isinf(x) else (str(int(x)) if float(x).is_integer() else str(x))

  return f"{'(' if lo_open or math.isinf(lo) else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open or math.isinf(hi) else ']'}"


def _get(config, name):
  return config[name] if name in config else None


def check_config(config) -> None:
  """Raises ConfigError listing every invalid setting of `config`; returns quietly when all are valid."""
  c = _Checker()
  task = _get(config, "task")
  c.number(config, "seed", 0, 2**31 - 1, integer=True)
  model_max_len = _check_model(c, config) if task in TRAINING_TASKS else None
  if task in TRAINING_TASKS:
    _check_train(c, _get(config, "train"))
    # bench replaces data.seq_len by bench.seq_len (checked against max_len in _check_bench).
    _check_data(c, _get(config, "data"), None if task == "bench" else model_max_len, task)
    _check_mesh(c, _get(config, "mesh"))
    # The tokenizer is built from config.tokenizer only here (compare: per scale; sft/dpo: the init_from run's;
    # bench: only without synthetic batches).
    bench = _get(config, "bench")
    if task == "pretrain" or (task == "bench" and bench is not None and not bench.get("synthetic", True)):
      _check_tokenizer(c, _get(config, "tokenizer"), _get(config, "model"))
  if task in ("pretrain", "sft", "dpo"):
    _check_sample(c, _get(config, "sample"), model_max_len)
  if _get(config, "dpo") is not None:
    c.number(config.dpo, "beta", 0, lo_open=True, prefix="dpo.", hint=" (the DPO temperature β; 0.1 is usual)")
  if task == "eval":
    c.number(config, "batch_size", 1, integer=True)
    c.number(config, "context", 0, integer=True, hint=" (0: the model's max_len)")
  if task == "compare" and _get(config, "compare") is not None:
    _check_compare(c, config)
  if task == "bench" and _get(config, "bench") is not None:
    _check_bench(c, config.bench, model_max_len)
  if c.problems:
    raise ConfigError(
      f"{len(c.problems)} invalid setting(s) for task {task!r}; nothing was run:\n  - " + "\n  - ".join(c.problems)
    )


def _check_model(c: _Checker, config) -> int | None:
  from modernlm_jax.model import ModelConfig

  model = _get(config, "model")
  if model is None:
    return None
  if model.get("dtype") in ("float16", "fp16", "half"):
    c.add(
      f"model.dtype={model['dtype']!r} is not supported (XLA fails compiling float16 training, and there is no "
      f"loss scaling); choose one of {list(SUPPORTED_DTYPES)} (bfloat16 computes in bf16 with float32 weights)"
    )
    model = {**model.to_dict(), "dtype": "float32"}
  try:
    return ModelConfig.from_dict(model).max_len
  except (ValueError, TypeError) as e:
    c.add(str(e))
    return None


def _check_train(c: _Checker, t) -> None:
  if t is None:
    return
  p = "train."
  c.number(t, "steps", 1, integer=True, prefix=p)
  batch = c.number(t, "batch_size", 1, integer=True, prefix=p)
  accum = c.number(t, "accum_steps", 1, integer=True, prefix=p)
  if batch and accum and batch % accum:
    c.add(f"train.batch_size={batch} must be divisible by train.accum_steps={accum}")
  c.number(t, "lr", 0, lo_open=True, prefix=p, hint=" (the peak learning rate)")
  c.number(t, "min_lr_ratio", 0, 1, prefix=p)
  # A warmup longer than the run is allowed (quick trial runs shorten train.steps only); the schedule handles it.
  c.number(t, "warmup_steps", 0, integer=True, prefix=p)
  c.choice(t, "schedule", ("cosine", "constant"), prefix=p)
  c.number(t, "b1", 0, 1, hi_open=True, prefix=p)
  c.number(t, "b2", 0, 1, hi_open=True, prefix=p)
  c.number(t, "eps", 0, lo_open=True, prefix=p)
  for name in ("weight_decay", "grad_clip", "z_loss", "sigreg_weight", "checkpoint_minutes"):
    c.number(t, name, 0, prefix=p, hint=" (0 turns it off)" if name != "weight_decay" else "")
  c.number(t, "loss_chunk", 0, integer=True, prefix=p, hint=" (0: one chunk)")
  for name in ("log_every", "eval_every", "eval_batches", "checkpoint_every"):
    c.number(t, name, 1, integer=True, prefix=p)
  c.number(
    t,
    "keep_checkpoints",
    1,
    integer=True,
    prefix=p,
    hint=" (0 would delete every checkpoint, the trained model included)",
  )
  c.number(t, "profile_steps", 0, integer=True, prefix=p)


def _check_data(c: _Checker, d, max_len: int | None, task: str) -> None:
  if d is None:
    return
  p = "data."
  seq_len = c.number(
    d,
    "seq_len",
    1,
    max_len if (max_len and task != "compare") else INF,
    integer=True,
    prefix=p,
    hint=f" (the model's model.max_len={max_len}: positions past it are clipped or untrained; lower "
    "data.seq_len or raise model.max_len)"
    if max_len and task != "compare"
    else "",
  )
  c.number(d, "num_epochs", 0, integer=True, prefix=p, hint=" (0: repeat forever)")
  c.number(d, "prefetch", 0, integer=True, prefix=p)
  c.number(d, "val_tokens", -INF, integer=True, prefix=p)
  if d.get("seq_len_schedule") and seq_len:
    from modernlm_jax.data.pipeline import parse_seq_len_schedule

    try:
      parse_seq_len_schedule(str(d.seq_len_schedule), int(seq_len))
    except ValueError as e:
      c.add(str(e))
  if "val_fraction" in d:  # post-training data
    c.number(d, "val_fraction", 0, 1, lo_open=True, hi_open=True, prefix=p)
    c.number(d, "val_min_records", 0, integer=True, prefix=p)
    c.number(
      d,
      "min_prompt_tokens",
      0,
      (seq_len - 1) if seq_len else INF,
      integer=True,
      prefix=p,
      hint=" (below data.seq_len, leaving room for the response)",
    )
    c.choice(d, "truncation", ("prompt_left", "right", "skip"), prefix=p)


def _check_mesh(c: _Checker, m) -> None:
  if m is None:
    return
  if "data" in m and m.data != -1:
    c.number(m, "data", 1, integer=True, prefix="mesh.", hint=" or -1 (every device not used by fsdp/tensor)")
  c.number(m, "fsdp", 1, integer=True, prefix="mesh.")
  c.number(m, "tensor", 1, integer=True, prefix="mesh.")


def _check_tokenizer(c: _Checker, tok, model) -> None:
  if tok is None:
    return
  c.choice(tok, "kind", TOKENIZER_KINDS, prefix="tokenizer.")
  kind = tok.get("kind")
  ids = TOKENIZER_IDS.get(kind)
  if kind == "sentencepiece" and not tok.get("path"):
    ids = c.number(tok, "vocab_size", 16, integer=True, prefix="tokenizer.")
  vocab = (model or {}).get("vocab_size")
  if ids and isinstance(vocab, int) and ids > vocab:
    c.add(
      f"tokenizer.kind={kind!r} has {int(ids)} ids but model.vocab_size={vocab}; raise model.vocab_size to at "
      f"least {int(ids)} (rounded up to a multiple of 64) or pick a smaller tokenizer"
    )


def _check_sample(c: _Checker, s, max_len: int | None) -> None:
  if s is None:
    return
  p = "sample."
  c.number(
    s,
    "max_new_tokens",
    1,
    (max_len - 1) if max_len else INF,
    integer=True,
    prefix=p,
    hint=" (below model.max_len, leaving room for the prompt)" if max_len else "",
  )
  c.number(s, "temperature", 0, prefix=p, hint=" (0: greedy)")
  c.number(s, "top_k", 0, integer=True, prefix=p, hint=" (0: off)")
  c.number(s, "top_p", 0, 1, lo_open=True, prefix=p, hint=" (1.0: off; 0 would keep no token)")


def _list(value) -> list[str]:
  return [v.strip() for v in str(value).split(",") if v.strip()]


def _positive_ints(c: _Checker, value, key: str) -> None:
  for item in _list(value):
    try:
      ok = int(item) >= 1
    except ValueError:
      ok = False
    if not ok:
      c.add(f"{key}={value!r}: {item!r} is not a positive integer (a comma-separated list of them)")


def _check_compare(c: _Checker, config) -> None:
  from modernlm_jax.model import ModelConfig, scales

  k = config.compare
  p = "compare."
  c.number(k, "eval_batch_size", 1, integer=True, prefix=p)
  c.number(k, "vocab_size", 0, integer=True, prefix=p, hint=" (0: the scale table's)")
  c.choice(k, "remeasure", ("", "inference"), prefix=p, hint=" ('' = the normal run)")
  if k.get("probes") is not None:
    pr = k.probes
    for name, lo in (("num_per_tier", 1), ("num_choices", 2), ("long_context", 1), ("batch_size", 1)):
      c.number(pr, name, lo, integer=True, prefix=p + "probes.")
    _positive_ints(c, pr.get("distances", ""), p + "probes.distances")
  if k.get("inference") is not None:
    inf = k.inference
    for name in ("prefill_tokens", "prefill_repeats", "decode_tokens", "decode_repeats", "context_repeats"):
      c.number(inf, name, 1, integer=True, prefix=p + "inference.")
    for name in ("context_lengths", "long_context_lengths"):
      _positive_ints(c, inf.get(name, ""), f"{p}inference.{name}")
  if k.get("smoke") is not None:
    sm = k.smoke
    c.number(sm, "overfit_rows", 1, integer=True, prefix=p + "smoke.")
    c.number(sm, "overfit_len", 0, integer=True, prefix=p + "smoke.", hint=" (0: data.seq_len)")
    c.number(sm, "overfit_steps", 1, integer=True, prefix=p + "smoke.")
    c.number(sm, "overfit_lr", 0, lo_open=True, prefix=p + "smoke.")
    c.number(sm, "data_fraction", 0, 1, lo_open=True, prefix=p + "smoke.")
    c.number(sm, "min_points", 1, integer=True, prefix=p + "smoke.")
  # Every member's sequence length must fit its model: families × scales, with the variants' overrides.
  variants = k.get("variants") or {}
  seq_len = config.data.get("seq_len")
  for arm in _list(k.get("families", "")):
    v = variants[arm] if arm in variants else None
    family = v.get("family") if v is not None else arm
    arm_seq = (v.get("data") or {}).get("seq_len", seq_len) if v is not None else seq_len
    for scale in _list(k.get("scales", "")):
      try:
        cfg = scales.preset(f"{family}-{scale}")
        overrides = dict((v.get("model") or {}).items()) if v is not None else {}
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides}) if overrides else cfg
      except (ValueError, KeyError):
        continue  # an unknown family or scale: the comparison plan reports it with the valid names
      if isinstance(arm_seq, int) and arm_seq > cfg.max_len:
        c.add(
          f"data.seq_len={arm_seq} exceeds the max_len={cfg.max_len} of compare member {arm} at scale {scale} "
          f"(family {family}); lower data.seq_len to at most {cfg.max_len} or drop that scale"
        )


def _check_bench(c: _Checker, b, max_len: int | None) -> None:
  p = "bench."
  c.number(b, "steps", 0, integer=True, prefix=p, hint=" (0: auto)")
  c.number(b, "warmup", -1, integer=True, prefix=p, hint=" (-1: auto)")
  c.number(b, "batch_size", 0, integer=True, prefix=p, hint=" (0: auto)")
  c.number(
    b,
    "seq_len",
    0,
    max_len or INF,
    integer=True,
    prefix=p,
    hint=f" (0: auto; at most model.max_len={max_len})" if max_len else " (0: auto)",
  )
  c.choice(b, "dtype", SUPPORTED_DTYPES, prefix=p, hint=" (float16 fails inside XLA)")
  c.number(b, "loss_chunk", 0, integer=True, prefix=p)
  c.number(b, "profile_steps", 0, integer=True, prefix=p)
  c.number(b, "top_ops", 1, integer=True, prefix=p)


# ----------------------------------------------------------------------------------------- override keys


def _load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_for_key_check", Path(path))
  if module_spec is None or module_spec.loader is None:
    return None
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_override_keys(argv: list[str]) -> None:
  """Raises ConfigError for a `--config.a.b=v` whose key does not exist, listing the valid keys where it fails.

  Runs before absl parses the flags (whose own error names no valid key for a key far from any)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not spec or not overrides:
    return
  try:
    config = _load_config_file(spec)
  except Exception:  # noqa: BLE001 - a broken config file is reported by absl's own loader, with its traceback
    return
  if config is None:
    return
  for key in overrides:
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else None
      if keys is None or part not in keys:
        where = ".".join(parts[:i]) or "the config"
        valid = f"valid keys of {where}: {sorted(keys)}" if keys is not None else f"{where} has no sub-keys"
        raise ConfigError(f"--config.{key}: unknown key {part!r}; {valid}")
      node = node[part]
