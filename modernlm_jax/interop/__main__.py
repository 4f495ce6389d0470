"""Convert GPT-2 weights between Hugging Face and modernlm_jax.

  python -m modernlm_jax.interop import --hf-dir DIR --out runs/gpt2-hf           # params.msgpack + model_config.json
  python -m modernlm_jax.interop export --params runs/gpt2-hf --out-dir hf_export  # config.json + model.safetensors
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
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m modernlm_jax.interop",
      description="Import a Hugging Face GPT-2 checkpoint into the gpt2 family, or export gpt2-family params to it.",
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="{import,export}")

  imp = sub.add_parser(
      "import", help="HF GPT-2 directory -> params.msgpack + model_config.json",
      description="Read config.json and model.safetensors / pytorch_model.bin (or a sharded index) from a local "
                  "directory and write flax msgpack params plus the matching ModelConfig as JSON. "
                  "Safetensors need no torch; .bin state dicts need torch.")
  imp.add_argument("--hf-dir", required=True, help="local directory written by save_pretrained (holds config.json)")
  imp.add_argument("--out", required=True,
                   help="FILE.msgpack (config goes to FILE.model_config.json) or a directory "
                        "(gets params.msgpack and model_config.json)")
  imp.add_argument("--attention-impl", default="auto", choices=ATTENTION_IMPLS,
                   help="attention kernel recorded in the saved ModelConfig (default: auto)")

  exp = sub.add_parser(
      "export", help="gpt2-family params -> HF config.json + model.safetensors",
      description="Write a directory that transformers' GPT2LMHeadModel.from_pretrained loads. The model config "
                  "comes from --preset, or from the model_config.json saved next to the params.")
  exp.add_argument("--params", required=True, help="params .msgpack file, or a directory holding params.msgpack")
  exp.add_argument("--preset", default=None,
                   help="gpt2-family preset the params were trained with (e.g. gpt2-125m); "
                        "default: the model_config.json next to --params")
  exp.add_argument("--out-dir", required=True, help="directory to write config.json and model.safetensors into")
  exp.add_argument("--eos-token-id", type=int, default=None,
                   help="bos/eos id written into config.json (default: 50256 for the 50257-token GPT-2 vocabulary, "
                        "else unset)")
  return parser


def _run_import(args) -> None:
  from modernlm_jax.interop import hf_gpt2

  params, cfg = hf_gpt2.import_hf_gpt2(args.hf_dir, attention_impl=args.attention_impl)
  params_path, config_path = hf_gpt2.save_params(params, cfg, args.out)
  preset = hf_gpt2.matching_preset(cfg)
  print(f"imported {hf_gpt2.count_parameters(params):,} parameters "
        f"({cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.vocab_size})")
  print(f"architecture matches preset: {preset}" if preset else "architecture matches no built-in preset")
  print(f"wrote {params_path}\nwrote {config_path}")


def _run_export(args) -> None:
  from modernlm_jax.interop import hf_gpt2
  from modernlm_jax.model import scales

  params, saved_cfg = hf_gpt2.load_params(args.params)
  if args.preset:
    cfg = scales.preset(args.preset)
  elif saved_cfg is not None:
    cfg = saved_cfg
  else:
    _, config_path = hf_gpt2.params_paths(args.params)
    raise hf_gpt2.CheckpointError(
        f"no model config: pass --preset (e.g. gpt2-125m) or put {config_path} next to the params")
  out = hf_gpt2.export_hf_gpt2(params, cfg, args.out_dir, eos_token_id=args.eos_token_id)
  print(f"exported {hf_gpt2.count_parameters(params):,} parameters to {out}/ "
        f"({hf_gpt2.SAFETENSORS_FILE}, config.json); load with GPT2LMHeadModel.from_pretrained({str(out)!r})")


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
