"""lm-evaluation-harness backend for our checkpoints (`pip install -e '.[lmeval]'`).

python -m modernlm_jax.lm_eval --checkpoint runs/m30 --tasks lambada_openai,hellaswag
# Python API: importing the adapter registers the model name "modernlm_jax" with lm-eval
import lm_eval, modernlm_jax.lm_eval.adapter
lm_eval.simple_evaluate(model="modernlm_jax", model_args="checkpoint=runs/m30", tasks=["lambada_openai"])
"""
