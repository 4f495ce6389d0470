"""Data: tokenizers, document sources, token cache and the deterministic batch pipeline (import the modules)."""
