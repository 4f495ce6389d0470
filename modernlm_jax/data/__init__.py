"""Data: tokenizers, document sources, token cache and the deterministic batch pipeline."""

from modernlm_jax.data.pipeline import (
    DataSettings,
    TrainIterator,
    default_data_config,
    load_doc_table,
    make_eval_batches,
    make_train_iterator,
    parse_seq_len_schedule,
    seq_len_at_step,
    tokenizer_training_texts,
)
from modernlm_jax.data.sources import load_documents, parse_mixture, read_source
from modernlm_jax.data.tokenizers import (
    ByteTokenizer,
    GPT2Tokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    check_vocab_fits,
    default_tokenizer_config,
)

__all__ = [
    "ByteTokenizer",
    "DataSettings",
    "GPT2Tokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TrainIterator",
    "build_tokenizer",
    "check_vocab_fits",
    "default_data_config",
    "default_tokenizer_config",
    "load_doc_table",
    "load_documents",
    "make_eval_batches",
    "make_train_iterator",
    "parse_mixture",
    "parse_seq_len_schedule",
    "read_source",
    "seq_len_at_step",
    "tokenizer_training_texts",
]
