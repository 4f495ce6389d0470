"""An unknown norm name is an error, not a silent LayerNorm (config validation is the first guard)."""

import pytest

from modernlm_jax.model import ModelConfig
from modernlm_jax.model.layers import make_norm


def test_config_rejects_unknown_norm():
  with pytest.raises(ValueError, match="norm"):
    ModelConfig(norm="batchnorm")


def test_make_norm_refuses_a_name_that_slipped_past_validation():
  cfg = ModelConfig()
  object.__setattr__(cfg, "norm", "batchnorm")  # as if built without __post_init__ checks
  with pytest.raises(ValueError, match="model.norm='batchnorm' is not a norm"):
    make_norm(cfg, "n")
