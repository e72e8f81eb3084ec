"""One table from (kernel kind, implementation name) to the function that computes it, as transformers picks
ALL_ATTENTION_FUNCTIONS[impl]. A call site names its kind and its implementation ("fast" unless it says otherwise:
BST and SUAN's AFNet read "sdpa", as they always did; the token-interaction models read the dense form itself, so
their outputs are what they were). Models look their kernels up at call time, so

    with attention_implementation("reference"):
        logits = model(batch)

runs a whole model on the references (the tests hold that equal to its own path); "sdpa" moves every dense
attention onto torch's fused kernel. A kind without the named kernel runs the call site's, else its reference.
GPU kernels (FlexAttention, fused kernels) plug in as further names."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from ...errors import ConfigError
from .causal import candidate_attention, candidate_reference, causal_history_attention, causal_reference
from .core import dense_attention, sdpa_attention
from .cross import lca, lca_reference
from .evo import (
    causal_full_attention,
    causal_full_reference,
    causal_linear_attention,
    causal_linear_reference,
    local_window_attention,
    local_window_reference,
    shared_key_attention,
    shared_key_reference,
)
from .pointwise import pointwise_attention, pointwise_candidates, pointwise_candidates_reference
from .target import TargetAttention

ATTENTION_FUNCTIONS: dict[str, dict[str, Callable]] = {
    # softmax(q k^T * scale + bias) v over allowed keys, (B, H, L, Dh); the dense form serves the token models
    # (AutoInt, HiFormer, OneTrans, EST's Full-Attention), BST and SUAN's AFNet ask for sdpa
    "dense": {"reference": dense_attention, "sdpa": sdpa_attention},
    # SUAN/LightSUAN history: causal, optionally local + dilated, time/position bias shared by the heads
    "causal": {"reference": causal_reference, "fast": causal_history_attention},
    # SUAN candidates over the cached history (and themselves)
    "candidate": {"reference": candidate_reference, "fast": candidate_attention},
    # HSTU: SiLU-weighted aggregation; the history pass is the dense form itself
    "pointwise": {"reference": pointwise_attention},
    "pointwise_candidates": {"reference": pointwise_candidates_reference, "fast": pointwise_candidates},
    # SparseCTR's EvoAttention branches (heads first, (H, R, L, Dh))
    "shared_keys": {"reference": shared_key_reference, "fast": shared_key_attention},
    "local_window": {"reference": local_window_reference, "fast": local_window_attention},
    "causal_full": {"reference": causal_full_reference, "fast": causal_full_attention},
    "linear": {"reference": causal_linear_reference, "fast": causal_linear_attention},
    # EST's cross-attention of the candidates' tokens over [R_u (cached) ; R_c]
    "lca": {"reference": lca_reference, "fast": lca},
    # DIN's target attention (a module: its two paths take it as first argument)
    "target": {"reference": TargetAttention.reference, "fast": TargetAttention.fast},
}
IMPLEMENTATIONS = ("fast", "sdpa", "reference")

_override: ContextVar[str | None] = ContextVar("attention_implementation", default=None)


@contextmanager
def attention_implementation(name: str) -> Iterator[None]:
    """Run every attention kernel called inside the block with implementation `name` where its kind has one."""
    if name not in IMPLEMENTATIONS:
        raise ConfigError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def attention_function(kind: str, impl: str = "fast") -> Callable:
    """The kernel of `kind`: the enclosing attention_implementation's if the kind has it, else `impl` (the call
    site's), else the kind's reference."""
    table = ATTENTION_FUNCTIONS[kind]
    return table.get(_override.get()) or table.get(impl) or table["reference"]
