"""Optimizer: AdamW (β=(0.9, 0.95), decoupled weight decay 0.1) with warmup + cosine decay and clipping.

Weight decay spares norms and biases (and embeddings when `train.decay_embeddings=False`): decaying a
norm's scale towards zero or an embedding row that is rarely seen only hurts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from modernlm_jax.model.param_layout import SCANNED_LAYERS


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  warmup = int(train_cfg.warmup_steps)
  total = max(int(train_cfg.steps), warmup + 1)
  peak, final = float(train_cfg.lr), float(train_cfg.lr) * float(train_cfg.min_lr_ratio)
  if train_cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  if train_cfg.schedule != "cosine":
    raise ValueError(f"train.schedule={train_cfg.schedule!r} is not valid; choose one of ['cosine', 'constant']")
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=final)


def decay_mask(params, decay_embeddings: bool):
  """True for parameters that get weight decay: matrices, minus embeddings unless asked."""

  def wants_decay(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    ndim = leaf.ndim - (names[0] == SCANNED_LAYERS)  # `model.scan_layers` stacks every layer on a leading axis
    if ndim < 2:  # norms, biases, sink logits
      return False
    if names[0] in ("embed", "pos_embed") or names[-1] == "pos_embed":
      return bool(decay_embeddings)
    return True

  return jax.tree_util.tree_map_with_path(wants_decay, params)


def clip_by_shared_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """`optax.clip_by_global_norm` that reuses the norm the train step already computed (`grad_norm=`).

  The step reports the gradient norm anyway; computing it again inside the optimizer is a second
  sum-of-squares pass over every gradient array (hundreds of small kernels per step on a GPU). Same
  arithmetic as optax's, and the same (empty) state, so existing checkpoints restore unchanged; without
  `grad_norm` it computes the norm itself.
  """

  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    g_norm = optax.global_norm(updates) if grad_norm is None else grad_norm
    trigger = jnp.squeeze(g_norm < max_norm)
    updates = jax.tree.map(lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm), updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def update_with_grad_norm(optimizer, grads, opt_state, params, grad_norm):
  """optimizer.update, handing over the already computed global gradient norm when the chain accepts it."""
  if isinstance(optimizer, optax.GradientTransformationExtraArgs):
    return optimizer.update(grads, opt_state, params, grad_norm=grad_norm)
  return optimizer.update(grads, opt_state, params)


def make_optimizer(train_cfg, params) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_cfg)
  chain = []
  if float(train_cfg.grad_clip) > 0:
    chain.append(clip_by_shared_global_norm(float(train_cfg.grad_clip)))
  if train_cfg.get("optimizer", "adamw") != "adamw":
    chain.append(make_matrix_optimizer(train_cfg, params, schedule))
  else:
    chain.append(
      optax.adamw(
        schedule,
        b1=float(train_cfg.b1),
        b2=float(train_cfg.b2),
        eps=float(train_cfg.eps),
        weight_decay=float(train_cfg.weight_decay),
        mask=decay_mask(params, bool(train_cfg.decay_embeddings)),
      )
    )
  return optax.chain(*chain)


OPTIMIZERS = ("adamw", "muon")


def muon_dimensions(path, leaf):
  """How Muon sees a parameter as a matrix (reduction axes, output axes), or None for AdamW.

  Hidden matrices get Muon: attention projections ([D, H, Dh] in, [H, Dh, D] out, gates) and MLP kernels.
  Embeddings, the LM head, position tables, norms, biases, sinks and recurrent-mixer tensors stay on AdamW, as
  in the modded-nanogpt speedrun (Muon is for the matrices between hidden states).
  """
  from optax.contrib import MuonDimensionNumbers

  names = [str(getattr(k, "key", k)) for k in path]
  if leaf.ndim < 2 or names[0] in ("embed", "pos_embed", "lm_head") or names[-1] == "pos_embed":
    return None
  last = names[-1]
  if last in ("query_kernel", "key_kernel", "value_kernel", "gate_kernel") and leaf.ndim in (2, 3):
    return MuonDimensionNumbers(reduction_axis=0, output_axis=tuple(range(1, leaf.ndim)))
  if last == "out_kernel" and leaf.ndim == 3:
    return MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2)
  if last == "kernel" and leaf.ndim == 2:
    return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
  return None


def make_matrix_optimizer(train_cfg, params, schedule) -> optax.GradientTransformation:
  """`train.optimizer=muon`: optax.contrib.muon for hidden matrices, AdamW (train.lr schedule) for the rest.

  Muon's rate follows the same warmup/decay shape scaled to `train.muon_lr`; weight decay applies to the Muon
  matrices and, through the usual mask, to the AdamW ones.
  """
  name = train_cfg.get("optimizer", "adamw")
  if name != "muon":
    raise ValueError(f"train.optimizer={name!r} is not valid; choose one of {list(OPTIMIZERS)}")
  from optax.contrib import muon

  peak = float(train_cfg.lr)
  muon_lr = float(train_cfg.get("muon_lr", 0.02))
  muon_schedule = lambda step: schedule(step) * (muon_lr / peak if peak else 0.0)
  labels = jax.tree_util.tree_map_with_path(
    lambda path, leaf: "adamw" if muon_dimensions(path, leaf) is None else "muon", params
  )
  dims = lambda tree: jax.tree_util.tree_map_with_path(muon_dimensions, tree)
  return optax.partition(
    {
      "muon": muon(
        muon_schedule,
        beta=float(train_cfg.get("muon_beta", 0.95)),
        weight_decay=float(train_cfg.weight_decay),
        muon_weight_dimension_numbers=dims,
      ),
      # The mask is a function: inside the partition AdamW sees the tree with Muon's leaves masked out.
      "adamw": optax.adamw(
        schedule,
        b1=float(train_cfg.b1),
        b2=float(train_cfg.b2),
        eps=float(train_cfg.eps),
        weight_decay=float(train_cfg.weight_decay),
        mask=lambda tree: decay_mask(tree, bool(train_cfg.decay_embeddings)),
      ),
    },
    labels,
  )
