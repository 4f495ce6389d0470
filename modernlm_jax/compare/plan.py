"""Who a matched comparison trains, and with which exact settings.

A comparison is a grid of members (arm × scale × seed). An *arm* is either a model family of the
scale table (`gpt2`, `modern`, `hybrid` when the recurrent family is installed) or a named variant
declared in `compare.variants`: a base family plus model / train / data overrides (used by the
ablation presets, e.g. the modern family with `positions="alibi"`).

Every member of one comparison shares the data source, token budget, schedule and batch order:
a member config is the comparison config with only the model, the seed, the tokenizer path and the
arm's overrides replaced. The data order depends only on `seed`, so all arms at one seed index see
identical batches. One tokenizer is built per distinct tokenizer spec (normally one per comparison,
trained once into `<workdir>/tokenizer/`) and every member points at it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from modernlm_jax import paths
from modernlm_jax.config_base import model_config_dict
from modernlm_jax.model import ModelConfig, scales

TOKENIZER_KINDS = ("auto", "gpt2", "sentencepiece", "bytes")
BUDGETS = ("tokens", "flops")
# Train / data keys a variant may not touch: changing them would break the matched protocol.
_PROTOCOL_TRAIN_KEYS = ("steps", "batch_size")
_PROTOCOL_DATA_KEYS = ("source", "val_source", "seq_len")


@dataclasses.dataclass(frozen=True)
class Member:
  arm: str  # the results.json "family" label
  family: str  # the scale-table family its model is built from
  scale: str
  seed: int

  @property
  def name(self) -> str:
    return f"{self.arm}-{self.scale}-s{self.seed}"


def parse_list(value: Any, what: str) -> list[str]:
  """`"a, b"` or a sequence -> ["a", "b"]; empty entries are dropped."""
  items = value.split(",") if isinstance(value, str) else list(value)
  out = [str(x).strip() for x in items if str(x).strip()]
  if not out:
    raise ValueError(f"compare.{what} is empty; list at least one, e.g. --config.compare.{what}=...")
  return out


def parse_ints(value: Any, what: str) -> list[int]:
  out = []
  for item in parse_list(value, what):
    try:
      out.append(int(item))
    except ValueError:
      raise ValueError(f"compare.{what} must be comma-separated integers, got {value!r}") from None
  return out


def valid_scales() -> list[str]:
  return [*scales.SCALES, *scales.DEV_SCALES]


def valid_families() -> list[str]:
  return list(scales.FAMILIES)


def variant_names(config) -> list[str]:
  return list((config.compare.get("variants") or {}).keys())


def arm_family(config, arm: str) -> str:
  variants = config.compare.get("variants") or {}
  if arm in variants:
    family = str(variants[arm].get("family", ""))
    if family not in valid_families():
      raise ValueError(
        f"compare.variants.{arm}.family={family!r} is not a model family; valid families: {valid_families()}"
      )
    return family
  if arm in valid_families():
    return arm
  raise ValueError(
    f"unknown family {arm!r} in compare.families; valid families: {valid_families()}"
    + (f"; variants defined in this config: {variant_names(config)}" if variant_names(config) else "")
  )


def plan(config) -> list[Member]:
  """The members in training order (scale, then seed, then arm), after validating every name."""
  c = config.compare
  arm_names = parse_list(c.families, "families")
  scale_names = parse_list(c.scales, "scales")
  seeds = parse_ints(c.seeds, "seeds")
  bad_scales = [s for s in scale_names if s not in valid_scales()]
  if bad_scales:
    raise ValueError(f"unknown scale(s) {bad_scales} in compare.scales; valid scales: {valid_scales()}")
  for what, values in (("families", arm_names), ("scales", scale_names), ("seeds", seeds)):
    if len(set(values)) != len(values):
      raise ValueError(f"compare.{what} lists a duplicate: {values}")
  families = {arm: arm_family(config, arm) for arm in arm_names}
  baseline = str(c.baseline)
  if baseline not in arm_names:
    raise ValueError(f"compare.baseline={baseline!r} is not one of compare.families {arm_names}")
  for name in variant_names(config):
    _check_variant_keys(config, name)
  budget_kind(config)
  return [Member(arm, families[arm], scale, seed) for scale in scale_names for seed in seeds for arm in arm_names]


def _check_variant_keys(config, name: str) -> None:
  v = config.compare.variants[name]
  unknown = sorted(set(v.keys()) - {"family", "model", "train", "data", "description"})
  if unknown:
    raise ValueError(f"compare.variants.{name} has unknown keys {unknown}; use family, model, train, data, description")
  fixed = [f"train.{k}" for k in (v.get("train") or {}) if k in _PROTOCOL_TRAIN_KEYS]
  fixed += [f"data.{k}" for k in (v.get("data") or {}) if k in _PROTOCOL_DATA_KEYS]
  if fixed:
    raise ValueError(
      f"compare.variants.{name} overrides {fixed}, which every member must share (the matched "
      "protocol); set them on the comparison itself (train.*, data.*)"
    )


# --------------------------------------------------------------------------- data

# The real corpus a comparison trains on by default: Project Gutenberg books (one document per book,
# long contexts) and WikiText-2 train (one document per paragraph), mixed in proportion to their sizes.
SHARED_BOOKS, SHARED_WIKITEXT = "gutenberg", "wikitext2/train.txt"


def shared_data_root() -> Path:
  """`$MODERNLM_SHARED_DATA`, else `../shared/data` next to the repository."""
  from modernlm_jax.data.posttrain_pipeline import shared_data_root as root

  return root()


def shared_corpus_source(root: str | Path | None = None) -> str:
  """The `data.source` spec of the shared Gutenberg + WikiText-2 train text, or "" when it is absent."""
  root = Path(root) if root is not None else shared_data_root()
  books, wiki = root / SHARED_BOOKS, root / SHARED_WIKITEXT
  book_files = sorted(books.glob("*.txt")) if books.is_dir() else []
  if not book_files or not wiki.is_file():
    return ""
  # Weights are shares of the mixed corpus; sizes as weights keep each part at about its natural size.
  return (
    f"mix:{sum(f.stat().st_size for f in book_files)}=text@file:{books}/*.txt,{wiki.stat().st_size}=text@blank:{wiki}"
  )


def check_data_source(config) -> None:
  """Stops a comparison before any work when it has no training corpus (a preset found no shared data)."""
  if str(config.data.source).strip():
    return
  raise ValueError(
    f"compare preset {str(config.get('preset', ''))!r} trains on a real corpus, and none was found: the shared "
    f"Gutenberg + WikiText-2 text is not under {shared_data_root()} (set $MODERNLM_SHARED_DATA to the shared data "
    "folder). Pass --config.data.source=text:/path/to/*.txt (any corpus; see modernlm_jax/data/sources.py), or "
    "--config.data.source=builtin to accept the small embedded corpus, which a comparison of this size would "
    "repeat many times over."
  )


def resolve_data_root(config) -> tuple[str, str]:
  """(folder, "") with the task / perplexity data, or ("", reason) when there is none to use."""
  value = str(config.compare.data_root).strip()
  root = Path(value).expanduser() if value else shared_data_root()
  if root.is_dir():
    return str(root), ""
  how = "compare.data_root" if value else "the shared data folder ($MODERNLM_SHARED_DATA or ../shared/data)"
  return "", f"no task data: {how} {root} does not exist; set --config.compare.data_root"


# --------------------------------------------------------------------------- models


def model_config(config, member: Member) -> ModelConfig:
  """The scale-table model of the member's family, with the shared vocabulary and the arm's overrides."""
  cfg = scales.preset(f"{member.family}-{member.scale}")
  vocab = int(config.compare.vocab_size)
  if vocab > 0:
    cfg = cfg.replace(vocab_size=vocab)
  variants = config.compare.get("variants") or {}
  overrides = dict((variants[member.arm].get("model") or {}).items()) if member.arm in variants else {}
  if overrides:
    # Round-trips through from_dict so an unknown field is an error naming the valid ones.
    cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
  return cfg


# --------------------------------------------------------------------------- tokenizers


def tokenizer_settings(config, scale: str) -> dict:
  """(kind, vocab_size) of the tokenizer every member at `scale` uses."""
  kind = str(config.compare.tokenizer)
  if kind not in TOKENIZER_KINDS:
    raise ValueError(f"compare.tokenizer={kind!r} is not valid; choose one of {list(TOKENIZER_KINDS)}")
  if kind == "auto":
    kind = scales.preset_tokenizer(scale)
  vocab = int(config.compare.vocab_size) or scales.preset(f"gpt2-{scale}").vocab_size
  return {"kind": kind, "vocab_size": vocab if kind == "sentencepiece" else None}


def build_shared_tokenizers(config, workdir: str | Path, scale_names: list[str]) -> dict[str, tuple[Any, Any]]:
  """scale -> (tokenizer, tokenizer ConfigDict for member configs); each distinct spec is built once.

  SentencePiece trains on the comparison's training split into `<workdir>/tokenizer/` (with several
  vocabulary sizes in one comparison: `<workdir>/vocab-<V>/tokenizer/`) and is reloaded from there.
  """
  from modernlm_jax.data.pipeline import tokenizer_training_texts
  from modernlm_jax.data.tokenizers import SP_MODEL_FILE, build_tokenizer

  workdir = paths.path(workdir)  # local (absolute) or gs://
  specs = {s: tokenizer_settings(config, s) for s in scale_names}
  sp_vocabs = sorted({v["vocab_size"] for v in specs.values() if v["kind"] == "sentencepiece"})
  built: dict[str, tuple[Any, Any]] = {}
  out = {}
  for scale, spec in specs.items():
    key = json.dumps(spec, sort_keys=True)
    if key not in built:
      tok_cfg = ml_collections.ConfigDict(config.tokenizer.to_dict())
      tok_cfg.kind = spec["kind"]
      if spec["kind"] == "sentencepiece":
        tok_cfg.vocab_size = spec["vocab_size"]
        home = workdir if len(sp_vocabs) == 1 else workdir / f"vocab-{spec['vocab_size']}"
        tok = build_tokenizer(tok_cfg, str(home), train_texts=tokenizer_training_texts(config.data))
        tok_cfg.path = str(home / "tokenizer" / SP_MODEL_FILE)
      else:
        tok = build_tokenizer(tok_cfg, str(workdir))
      built[key] = (tok, tok_cfg)
    out[scale] = built[key]
  return out


# --------------------------------------------------------------------------- member configs


def member_config(config, member: Member, tokenizer_cfg) -> ml_collections.ConfigDict:
  """A pretraining config for one member: the comparison's settings with model, seed, tokenizer replaced."""
  d = config.to_dict()
  d.pop("compare", None)
  m = ml_collections.ConfigDict(d)
  m.task = "pretrain"
  m.seed = int(member.seed)
  m.preset = f"{member.family}-{member.scale}"
  m.init_from = ""
  m.tokenizer = ml_collections.ConfigDict(tokenizer_cfg.to_dict())
  m.model = model_config_dict(model_config(config, member))
  m.train.steps = member_steps(config, member)
  variants = config.compare.get("variants") or {}
  if member.arm in variants:
    v = variants[member.arm]
    for section in ("train", "data"):
      for key, value in (v.get(section) or {}).items():
        if key not in m[section]:
          raise ValueError(
            f"compare.variants.{member.arm}.{section}.{key} is not a {section} setting; valid: "
            f"{sorted(m[section].keys())}"
          )
        m[section][key] = value
  return m


# --------------------------------------------------------------------------- budgets


def budget_kind(config) -> str:
  kind = str(config.compare.get("budget", "tokens"))
  if kind not in BUDGETS:
    raise ValueError(
      f"compare.budget={kind!r} is not valid; choose one of {list(BUDGETS)} (tokens: every member "
      "trains train.steps; flops: each member's steps match the baseline's training FLOPs)"
    )
  return kind


def _flops_per_step(config, member: Member) -> float:
  from modernlm_jax.train.flops import flops_per_token

  seq_len, batch = int(config.data.seq_len), int(config.train.batch_size)
  return flops_per_token(model_config(config, member), seq_len) * batch * seq_len


def baseline_member(config, member: Member) -> Member:
  base = str(config.compare.baseline)
  return Member(base, arm_family(config, base), member.scale, member.seed)


def member_steps(config, member: Member) -> int:
  """train.steps for the token budget; with compare.budget=flops, the step count whose training FLOPs (the MFU
  counter, train/flops.py) come closest to the baseline's train.steps at the same scale."""
  steps = int(config.train.steps)
  if budget_kind(config) == "tokens" or member.arm == str(config.compare.baseline):
    return steps
  target = _flops_per_step(config, baseline_member(config, member)) * steps
  return max(1, int(round(target / _flops_per_step(config, member))))


def budget_entry(config, member: Member) -> dict:
  """The budget block of a member: steps, tokens and training FLOPs, and what was matched."""
  steps = member_steps(config, member)
  tokens_per_step = int(config.train.batch_size) * int(config.data.seq_len)
  flops = _flops_per_step(config, member) * steps
  base_flops = _flops_per_step(config, baseline_member(config, member)) * int(config.train.steps)
  return {
    "kind": budget_kind(config),
    "steps": steps,
    "tokens": steps * tokens_per_step,
    "train_flops": flops,
    "baseline_train_flops": base_flops,
    "flops_vs_baseline": flops / base_flops,
  }


def protocol(config, tokenizers: dict[str, tuple[Any, Any]]) -> dict:
  """The `protocol` block of results.json: everything all members share."""
  t, d = config.train, config.data
  seq_len, batch = int(d.seq_len), int(t.batch_size)
  idents = {scale: tok.identity for scale, (tok, _) in tokenizers.items()}
  distinct = sorted(set(idents.values()))
  from modernlm_jax.data.pipeline import scheduled_tokens

  data_root, root_reason = resolve_data_root(config)
  suite = str(config.compare.suite)
  corpora = str(config.compare.get("perplexity", "")).strip()
  proto: dict[str, Any] = {
    "data_source": str(d.source) + (f" (validation: {d.val_source})" if d.val_source else ""),
    "token_budget": scheduled_tokens(d, int(t.steps), batch),  # the batches' real lengths under a schedule
    "schedule": {
      "kind": str(t.schedule),
      "steps": int(t.steps),
      "warmup_steps": int(t.warmup_steps),
      "max_lr": float(t.lr),
      "min_lr_ratio": float(t.min_lr_ratio),
    },
    "batch_size": batch,
    "seq_len": seq_len,
    "seeds": parse_ints(config.compare.seeds, "seeds"),
    "tokenizer": distinct[0] if len(distinct) == 1 else "; ".join(f"{s}: {i}" for s, i in idents.items()),
    "baseline_family": str(config.compare.baseline),
    "optimizer": {
      "name": "adamw",
      "b1": float(t.b1),
      "b2": float(t.b2),
      "weight_decay": float(t.weight_decay),
      "grad_clip": float(t.grad_clip),
    },
    "batch_order": "identical for every family at a seed (data order depends only on the seed)",
    "downstream_tasks": (
      (f"suite {suite!r} (data: {data_root})" if data_root else f"skipped: {root_reason}")
      if suite
      else "not run: compare.suite is empty (set it to 'quick' or 'full')"
    ),
    "perplexity_corpora": (
      (corpora + (f" (data: {data_root})" if data_root else f" — skipped: {root_reason}"))
      + (
        f"; first {int(config.compare.perplexity_max_chars):,} characters of each"
        if int(config.compare.get("perplexity_max_chars", 0)) > 0
        else ""
      )
      if corpora
      else "none (compare.perplexity is empty)"
    ),
  }
  if str(d.seq_len_schedule):
    proto["seq_len_schedule"] = str(d.seq_len_schedule)
  if budget_kind(config) == "flops":
    proto["budget"] = "flops"
    proto["budget_note"] = (
      "compute-matched: each member's steps are set so its training FLOPs match the baseline's "
      "at train.steps; token_budget is the baseline's"
    )
  if str(config.compare.decision_scale):
    proto["decision_scale"] = str(config.compare.decision_scale)
  if len(distinct) > 1:
    proto["tokenizer_note"] = "scales use different tokenizers: compare losses across scales in bits/byte"
  variants = config.compare.get("variants") or {}
  arms = parse_list(config.compare.families, "families")
  described = {a: _describe_variant(variants[a]) for a in arms if a in variants}
  if described:
    proto["variants"] = described
  dev = jax.devices()[0]
  proto["hardware"] = f"{jax.device_count()}x {getattr(dev, 'device_kind', dev.platform)} ({dev.platform})"
  return proto


def _describe_variant(v) -> str:
  parts = [f"family {v.get('family')}"]
  for section in ("model", "train", "data"):
    for key, value in (v.get(section) or {}).items():
      parts.append(f"{section}.{key}={value!r}")
  return ", ".join(parts)


PROTOCOL_IDENTITY_KEYS = (
  "data_source",
  "token_budget",
  "schedule",
  "batch_size",
  "seq_len",
  "tokenizer",
  "optimizer",
  "seq_len_schedule",
  "budget",
)
