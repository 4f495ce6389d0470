"""Convert weights between Hugging Face (GPT-2, Llama/Qwen3) and modernlm_jax.

python -m modernlm_jax.interop import --hf-dir DIR --out runs/gpt2-hf           # params.msgpack + model_config.json
python -m modernlm_jax.interop export --run runs/m30 --out-dir hf/m30           # layout picked from the run's config
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from modernlm_jax.model.config import ATTENTION_IMPLS

_EPILOG = """examples:
  # a checkpoint downloaded beforehand (nothing is downloaded here):
  #   hf download gpt2 config.json model.safetensors --local-dir ~/hf/gpt2
  python -m modernlm_jax.interop import --hf-dir ~/hf/gpt2 --out runs/gpt2-hf
  python -m modernlm_jax.interop export --params runs/gpt2-hf --out-dir ~/hf/gpt2-roundtrip
  python -m modernlm_jax.interop export --params my.msgpack --preset gpt2-125m --out-dir ~/hf/mine
  # a training run (newest checkpoint) or one checkpoints/<step>; modern family -> LlamaForCausalLM:
  python -m modernlm_jax.interop export --run runs/modern-tiny --out-dir ~/hf/modern-tiny
  python -m modernlm_jax.interop export --run runs/modern-tiny/checkpoints/200 --format llama --out-dir ~/hf/m200
  python -m modernlm_jax.interop import --hf-dir ~/hf/modern-tiny --out runs/modern-tiny-back
"""

FORMATS = ("auto", "gpt2", "llama")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m modernlm_jax.interop",
    description="Import a Hugging Face GPT-2 / Llama / Qwen3 checkpoint, or export our gpt2 family to "
    "GPT2LMHeadModel and our modern family to LlamaForCausalLM (Qwen3ForCausalLM with QK-norm).",
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True, metavar="{import,export}")

  imp = sub.add_parser(
    "import",
    help="HF GPT-2 / Llama directory -> params.msgpack + model_config.json",
    description="Read config.json and model.safetensors / pytorch_model.bin (or a sharded index) from a local "
    "directory and write flax msgpack params plus the matching ModelConfig as JSON. "
    "Safetensors need no torch; .bin state dicts need torch.",
  )
  imp.add_argument("--hf-dir", required=True, help="local directory written by save_pretrained (holds config.json)")
  imp.add_argument(
    "--out",
    required=True,
    help="FILE.msgpack (config goes to FILE.model_config.json) or a directory "
    "(gets params.msgpack and model_config.json)",
  )
  imp.add_argument(
    "--attention-impl",
    default="auto",
    choices=ATTENTION_IMPLS,
    help="attention kernel recorded in the saved ModelConfig (default: auto)",
  )
  imp.add_argument(
    "--format",
    default="auto",
    choices=FORMATS,
    help="checkpoint layout; auto reads config.json's model_type (gpt2 -> gpt2, llama/qwen3 -> llama)",
  )

  exp = sub.add_parser(
    "export",
    help="our params -> HF config.json + model.safetensors (+ tokenizer files)",
    description="Write a directory that transformers' AutoModelForCausalLM.from_pretrained loads. The model config "
    "comes from --preset, the model_config.json saved next to params.msgpack, or the run's checkpoint "
    "metadata; the run's tokenizer is written in its HF form (GPT-2 BPE, SentencePiece) too.",
  )
  exp.add_argument(
    "--run",
    "--params",
    dest="params",
    required=True,
    metavar="RUN",
    help="a run directory (newest checkpoint), one <run>/checkpoints/<step>, a params .msgpack file, "
    "or a directory holding params.msgpack",
  )
  exp.add_argument(
    "--format",
    default="auto",
    choices=FORMATS,
    help="HF layout: gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM / Qwen3ForCausalLM); "
    "auto picks gpt2 for the gpt2 architecture, else llama",
  )
  exp.add_argument(
    "--preset",
    default=None,
    help="gpt2-family preset the params were trained with (e.g. gpt2-125m); "
    "default: the model_config.json next to --params",
  )
  exp.add_argument("--out-dir", required=True, help="directory to write config.json and model.safetensors into")
  exp.add_argument(
    "--eos-token-id",
    type=int,
    default=None,
    help="bos/eos id written into config.json (default: 50256 for the 50257-token GPT-2 vocabulary, else unset)",
  )
  return parser


def _import_format(hf_dir: str, wanted: str) -> str:
  import json
  from pathlib import Path

  if wanted != "auto":
    return wanted
  config_path = Path(hf_dir) / "config.json"
  try:
    model_type = json.loads(config_path.read_text()).get("model_type")
  except (OSError, ValueError):
    return "gpt2"  # import_hf_gpt2 reports the missing / broken config.json with its own message
  return "llama" if model_type in ("llama", "qwen3") else "gpt2"


def _run_import(args) -> None:
  from modernlm_jax.interop import hf_gpt2, hf_llama

  if _import_format(args.hf_dir, args.format) == "llama":
    params, cfg = hf_llama.import_hf_llama(args.hf_dir, attention_impl=args.attention_impl)
  else:
    params, cfg = hf_gpt2.import_hf_gpt2(args.hf_dir, attention_impl=args.attention_impl)
  params_path, config_path = hf_gpt2.save_params(params, cfg, args.out)
  preset = hf_gpt2.matching_preset(cfg) if cfg.family == "gpt2" else None
  print(
    f"imported {hf_gpt2.count_parameters(params):,} parameters "
    f"({cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.vocab_size})"
  )
  print(f"architecture matches preset: {preset}" if preset else "architecture matches no built-in preset")
  print(f"wrote {params_path}\nwrote {config_path}")


def _load_for_export(args):
  """(params, ModelConfig, tokenizer or None) from a params file/dir or a run / checkpoints/<step> directory."""
  from pathlib import Path

  from modernlm_jax.interop import hf_gpt2
  from modernlm_jax.model import scales

  path = Path(args.params)
  if path.suffix == ".msgpack" or (path / hf_gpt2.PARAMS_FILE).is_file() or not path.exists():
    params, saved_cfg = hf_gpt2.load_params(path)
    tokenizer = None
  else:
    from modernlm_jax.eval.checkpoint_model import EvalCheckpointError, load_eval_model

    try:
      loaded = load_eval_model(path)
    except EvalCheckpointError as e:
      raise hf_gpt2.CheckpointError(str(e)) from e
    params, saved_cfg, tokenizer = loaded.params, loaded.cfg, loaded.tokenizer
    print(f"loaded {loaded.source} (step {loaded.step}, family {saved_cfg.family}, tokenizer {tokenizer.identity})")
  if args.preset:
    cfg = scales.preset(args.preset)
  elif saved_cfg is not None:
    cfg = saved_cfg
  else:
    _, config_path = hf_gpt2.params_paths(args.params)
    raise hf_gpt2.CheckpointError(
      f"no model config: pass --preset (e.g. gpt2-125m) or put {config_path} next to the params"
    )
  return params, cfg, tokenizer


def _export_format(cfg, wanted: str) -> str:
  from modernlm_jax.interop import hf_gpt2

  if wanted != "auto":
    return wanted
  try:
    hf_gpt2.check_gpt2_compatible(cfg)
    return "gpt2"
  except hf_gpt2.CheckpointError:
    return "llama"  # its own check names whatever Llama cannot represent either


def _run_export(args) -> None:
  from modernlm_jax.interop import hf_gpt2, hf_llama

  params, cfg, tokenizer = _load_for_export(args)
  fmt = _export_format(cfg, args.format)
  if fmt == "llama":
    out, tok_files = hf_llama.export_hf_llama(
      params, cfg, args.out_dir, tokenizer=tokenizer, eos_token_id=args.eos_token_id
    )
    cls = "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"
  else:
    eos = args.eos_token_id if args.eos_token_id is not None else (tokenizer.eos_id if tokenizer else None)
    out = hf_gpt2.export_hf_gpt2(params, cfg, args.out_dir, eos_token_id=eos)
    tok_files = hf_llama.tokenizer_files(tokenizer, out) if tokenizer is not None else []
    cls = "GPT2LMHeadModel"
  tok_note = (
    f", tokenizer: {', '.join(tok_files)}"
    if tok_files
    else (f"; tokenizer {tokenizer.identity} has no Hugging Face form, none written" if tokenizer else "")
  )
  print(
    f"exported {hf_gpt2.count_parameters(params):,} parameters to {out}/ "
    f"({hf_gpt2.SAFETENSORS_FILE}, config.json{tok_note}); load with {cls}.from_pretrained({str(out)!r})"
  )


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    (_run_import if args.command == "import" else _run_export)(args)
  except (ValueError, ImportError) as e:  # CheckpointError, an unknown preset, a missing optional package
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
