"""The fast paths compute the reference function: optimised step parity, chunked loss, remat, kernels."""

import functools
import importlib.util
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from train_utils import synthetic_stage, tiny_config

from modernlm_jax.jobs import bench_parity
from modernlm_jax.model import ModelConfig, init_params, tpu_attention
from modernlm_jax.model.attention import reference_attention, select_attention_impl
from modernlm_jax.train import loop as loop_lib
from modernlm_jax.train.flops import flops_per_token
from modernlm_jax.train.objectives import NextTokenObjective, cross_entropy_terms
from modernlm_jax.train.synthetic import SyntheticBatches

TINY = dict(
  vocab_size=64,
  max_len=64,
  n_layers=2,
  d_model=32,
  n_heads=4,
  d_ff=64,
  family="modern",
  positions="rope",
  norm="rmsnorm",
  mlp="swiglu",
  use_bias=False,
)


def _bench_config(n_layers=1, **knobs):
  spec = importlib.util.spec_from_file_location(
    "bench_config", Path(__file__).resolve().parents[1] / "configs" / "bench.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("modern-tiny")
  c.model.update({k: v for k, v in TINY.items() if k != "family"})
  c.model.n_layers = n_layers  # one block keeps the two compiles cheap; it still has every fast-path piece
  c.bench.update(dict(batch_size=4, seq_len=32, steps=10, warmup=1))
  c.bench.update(knobs)
  c.train.update(dict(lr=1e-2, warmup_steps=2))
  c.mesh.update(dict(data=1, fsdp=1, tensor=1))
  return c


@pytest.mark.slow
def test_optimised_step_matches_reference_step_for_10_steps(tmp_path, capsys):
  """The bench_parity command: bf16 + fused chunked loss + remat vs float32 reference kernel, same batches."""
  summary = bench_parity.run(
    _bench_config(dtype="bfloat16", attention_impl="xla", loss_chunk=8, remat="dots"), tmp_path, steps=10
  )
  fast, ref = np.array(summary["optimised"]["losses"]), np.array(summary["reference"]["losses"])
  assert summary["optimised"]["dtype"] == "bfloat16" and summary["reference"]["kernel"] == "reference"
  assert len(fast) == len(ref) == 10
  assert ref[-1] < ref[0] - 0.1  # the run actually trains, so parity covers the updates too
  np.testing.assert_allclose(fast, ref, rtol=1e-2, atol=1e-2)  # seen: 3e-4 (CPU), 2.3e-4 (H100, gpt2-125m)
  assert summary["max_abs_diff"] == pytest.approx(float(np.abs(fast - ref).max()))
  assert '"max_abs_diff"' in capsys.readouterr().out


@pytest.mark.slow
class ChunkedLossTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_chunked_cross_entropy_matches_full_logits(self):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h_BTD = jax.random.normal(k1, (2, 13, 8))
    w_DV = jax.random.normal(k2, (8, 50)) * 0.3
    t_BT = jax.random.randint(k3, (2, 13), 0, 50)

    def nll(h, w, chunk):
      lse, tl = cross_entropy_terms(h, w, t_BT, chunk)
      return jnp.sum(lse - tl)

    full = self.variant(lambda h, w: jax.value_and_grad(nll, argnums=(0, 1))(h, w, 0))(h_BTD, w_DV)
    chunked = self.variant(lambda h, w: jax.value_and_grad(nll, argnums=(0, 1))(h, w, 4))(h_BTD, w_DV)  # 13 = 3×4 + 1
    chex.assert_trees_all_close(chunked, full, rtol=1e-5, atol=1e-5)
    logits = h_BTD @ w_DV
    expected = jnp.sum(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, t_BT[..., None], -1)[..., 0])
    chex.assert_trees_all_close(full[0], expected, rtol=1e-5)


def _loss_and_grads(cfg: ModelConfig, **objective_kw):
  params = init_params(cfg, jax.random.key(1))
  objective = NextTokenObjective(cfg, **objective_kw)
  batch = {k: jnp.asarray(v) for k, v in SyntheticBatches(batch_size=2, seq_len=16, vocab_size=64).batch_at(3).items()}
  assert bool(jnp.all(batch["segment_ids"] == 1))
  fn = jax.jit(jax.value_and_grad(lambda p: objective.loss_sums(p, batch, jax.random.key(0))[0]))
  return fn(params)


ONE_BLOCK = {**TINY, "n_layers": 1}  # remat wraps each block alike: one block is the whole story, at half the compile


@functools.lru_cache(maxsize=1)
def _reference_loss_and_grads():
  return _loss_and_grads(ModelConfig(**ONE_BLOCK))


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots_no_batch"])  # "dots" differs only in the policy table
def test_remat_policies_give_the_same_loss_and_gradients(remat):
  chex.assert_trees_all_close(
    _loss_and_grads(ModelConfig(**ONE_BLOCK, remat=remat)), _reference_loss_and_grads(), rtol=1e-5, atol=1e-6
  )


@pytest.mark.slow
def test_dropping_single_segment_ids_is_the_same_function():
  chex.assert_trees_all_close(
    _loss_and_grads(ModelConfig(**ONE_BLOCK), use_segment_ids=False), _reference_loss_and_grads(), rtol=1e-5, atol=1e-6
  )


def test_objective_keeps_segments_when_documents_are_isolated():
  from modernlm_jax.train.registry import make_objective

  c = tiny_config()
  assert make_objective(c).use_segment_ids is True  # no data.isolate_documents key: the safe default
  c.data.isolate_documents = False
  assert make_objective(c).use_segment_ids is False
  c.objective = "sft"
  assert make_objective(c).use_segment_ids is True  # SFT rows are packed examples: always masked


def test_tpu_kernel_selection():
  base = ModelConfig(**TINY, dtype="bfloat16")
  sel = lambda cfg, **kw: select_attention_impl(
    cfg, **{"backend": "tpu", "has_segments": True, "decoding": False, "seq_len": 1024, **kw}
  )
  assert sel(base) == ("splash", "auto: TPU with supported options")  # segments are fine for splash
  assert sel(base.replace(attention_impl="splash"))[0] == "splash"
  assert sel(base.replace(dtype="float32"))[0] == "splash"
  kernel, reason = sel(base, seq_len=100)
  assert kernel == "xla" and "multiple of 128" in reason
  assert sel(base, decoding=True)[0] == "xla"
  assert sel(base.replace(positions="alibi"))[0] == "xla"
  assert sel(base.replace(attn_sinks=True))[0] == "splash"  # sinks are native to splash
  assert sel(base.replace(attention_impl="xla"))[0] == "xla"
  assert sel(base.replace(attention_impl="cudnn"))[0] == "xla"
  kernel, reason = sel(base.replace(attention_impl="splash"), backend="gpu", has_segments=False)
  assert kernel == "xla" and "needs a TPU" in reason
  assert sel(base, backend="gpu", has_segments=False)[0] == "cudnn"
  assert sel(base, backend="cpu")[0] == "xla"


def test_splash_import_is_guarded(monkeypatch):
  ok, why = tpu_attention.splash_available()
  assert isinstance(ok, bool) and (ok or why)

  def broken():
    raise ImportError("no pallas here")

  monkeypatch.setattr(tpu_attention, "_import_splash", broken)
  ok, why = tpu_attention.splash_available()
  assert not ok and "no pallas here" in why
  kernel, reason = select_attention_impl(
    ModelConfig(**TINY), backend="tpu", has_segments=False, decoding=False, seq_len=128
  )
  assert kernel == "xla" and "no pallas here" in reason


def test_kernel_mesh_context_only_on_tpu():
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  with tpu_attention.kernel_mesh_context(mesh, backend="cpu"):
    assert jax.sharding.get_abstract_mesh().empty
  with tpu_attention.kernel_mesh_context(mesh, backend="tpu"):
    assert jax.sharding.get_abstract_mesh().axis_names == ("data", "fsdp", "tensor")


def _qkv_segments(B=2, T=128, H=2, D=32):
  ks = jax.random.split(jax.random.key(7), 3)
  q, k, v = (jax.random.normal(x, (B, T, H, D)) for x in ks)
  seg = jnp.asarray(np.array([[1] * 50 + [2] * (T - 50), [1] * T]), jnp.int32)
  mask = jnp.tril(jnp.ones((T, T), bool))[None] & (seg[:, :, None] == seg[:, None, :])
  return q, k, v, seg, mask


@pytest.mark.slow
def test_splash_kernel_matches_reference_in_interpret_mode():
  """The real Pallas kernel, run by the Pallas interpreter on CPU: forward, gradient, and under a mesh."""
  q, k, v, seg, mask = _qkv_segments()
  ref, ref_vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v)
  out, out_vjp = jax.vjp(lambda q, k, v: tpu_attention.splash_attention(q, k, v, seg, interpret=True), q, k, v)
  chex.assert_trees_all_close(out, ref, atol=1e-5)
  cotangent = jnp.cos(ref)
  chex.assert_trees_all_close(out_vjp(cotangent), ref_vjp(cotangent), atol=1e-4)  # dq, dk, dv
  if jax.device_count() >= 4:
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh):  # rows over data, heads over tensor through shard_map
      out = jax.jit(lambda q, k, v, s: tpu_attention.splash_attention(q, k, v, s, interpret=True))(q, k, v, seg)
    chex.assert_trees_all_close(out, ref, atol=1e-5)


def test_splash_rejects_sequence_it_cannot_tile():
  q = jnp.zeros((1, 100, 2, 8))
  with pytest.raises(ValueError, match="divisible by 128"):
    tpu_attention.splash_attention(q, q, q, interpret=True)


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices: XLA_FLAGS set by the root conftest.py")
def test_loop_mfu_counts_all_devices_and_profile_steps_prints_top_ops(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(loop_lib, "device_peak_flops", lambda: 1e12)
  cfg = tiny_config(steps=6, mesh=(2, 1, 1), profile_steps=2)
  out = loop_lib.train(cfg, tmp_path, synthetic_stage(cfg))
  fpt = flops_per_token(ModelConfig.from_dict(cfg.model), cfg.data.seq_len)
  assert out["mfu"] == pytest.approx(fpt * out["tokens_per_s"] / 2e12)
  printed = capsys.readouterr().out
  assert "trace:" in printed and "share" in printed
  assert (tmp_path / "profile").is_dir()
