"""Test doubles shared by several test modules."""

from modernlm_jax.data import tokenizers


class ByteTokenizer(tokenizers.ByteTokenizer):
  """The package's byte tokenizer with a test identity, remembering every text it encoded (`seen`)."""

  def __init__(self, identity: str = "bytes-test"):
    self.identity = identity
    self.seen: list[str] = []

  def encode(self, text: str) -> list[int]:
    self.seen.append(text)
    return super().encode(text)
