"""Attention kernels behind `attention.select_attention_impl`; the einsum `reference_attention` is their oracle.

`flash.py`: our Pallas flash attention (Triton on GPU, interpreter on CPU) with segment ids, ALiBi and sinks.
Splash attention on TPU lives in `model/tpu_attention.py`.
"""
