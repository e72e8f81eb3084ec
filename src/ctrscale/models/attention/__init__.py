"""Attention kernels of every model, behind one dispatch (dispatch.py: ATTENTION_FUNCTIONS[kind][impl]).

core: head split/merge, the masked softmax, the dense reference and its SDPA twin;
bias: the relative time/position biases; causal: SUAN's causal and candidate kernels; evo: SparseCTR's
EvoAttention branches (chunks: its chunking); pointwise: HSTU's; cross: EST's LCA; target: DIN's.
"""
from .bias import ENCODINGS, BiasFn, RelativeEncoding, TimePositionBias, table_lookup, time_bucket
from .chunks import CHUNKINGS, Chunks, chunk_ids, make_chunks
from .core import MASKED, attention_weights, dense_attention, masked_softmax, merge_heads, split_heads
from .dispatch import ATTENTION_FUNCTIONS, IMPLEMENTATIONS, attention_function, attention_implementation
from .target import TargetAttention

__all__ = [
    "ATTENTION_FUNCTIONS", "BiasFn", "CHUNKINGS", "Chunks", "ENCODINGS", "IMPLEMENTATIONS", "MASKED",
    "RelativeEncoding", "TargetAttention", "TimePositionBias", "attention_function", "attention_implementation",
    "attention_weights", "chunk_ids", "dense_attention", "make_chunks", "masked_softmax", "merge_heads",
    "split_heads", "table_lookup", "time_bucket",
]
