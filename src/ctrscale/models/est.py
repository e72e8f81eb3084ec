"""EST, the Efficiently Scalable Transformer (seed: EST-unified-modeling.txt; design: shared/spec/est.md).

All raw inputs form one unified token sequence without early pooling:
- N: one token per non-behavioral field (embedding, then a per-field linear map to d) plus one SimTier token
  (histograms of the candidate's content cosine to the behaviors of R_u and of R_c);
- S = [R_u ; R_c]: the user's recent behaviors and the candidate-specific behaviors the GSU retrieved from the
  long history (data/gsu.py), each through its own sequence tokenizer (field embeddings concatenated, linear).

One layer (pre-norm, residual): LCA, the N tokens attend to S (token-specific W_Q and W_O, shared W_K and W_V,
padding masked, behaviors attend to nothing); CSA in parallel, each behavior adds the fixed-weight mix of its
top-k most content-similar behaviors of the same sequence (R_u within R_u, R_c within R_c; the pattern is
computed once per sample and reused by every layer); then a PerToken-FFN for each N token and one Shared-FFN for
all behaviors. Head: MLP over [flatten(N), mean of the valid S].

R_u is touched only by CSA within R_u and the shared FFN, so its states and K/V at every layer do not depend on
the candidate: request scoring encodes them once per request (`encode_user`) and each candidate then pays for its
own tokens, its R_c and the cross-attention (`score_candidates`). The pointwise forward is that same code with
one candidate per request.

attention="full" is the paper's Full-Attention variant: [N ; S] under full self-attention (the same token-specific
projections for N queries, shared ones for behavior queries, the same FFNs, no CSA). It has no user-side reuse.
For the analysis it can record its attention maps and mask any of the four blocks N->N, N->S, S->N, S->S.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import check_heads, checked
from .attention import attention_function, attention_weights, merge_heads, split_heads
from .base import UserState
from .content import content_topk, csa_apply
from .layers import MLP, RMSNorm, SwiGLU, TokenLinear, TokenSwiGLU
from .registry import register
from .tokens import UnifiedInputConfig, UnifiedInputModel, UnifiedInputs, need_candidate_sequence

ATTENTIONS = ("est", "lca", "full")
BLOCKS = ("N->N", "N->S", "S->N", "S->S")  # query kind -> key kind
SCORE_BUDGET = 1 << 22  # request scoring: LCA score floats per candidate chunk


@dataclass
class ESTConfig(UnifiedInputConfig):
    layers: int = checked(2, ge=1)              # (the paper: 6)
    heads: int = checked(4, ge=1)
    ffn_mult: int = checked(2, ge=1)            # SwiGLU hidden width = ffn_mult * dim
    attention: str = checked("est", choices=ATTENTIONS)  # est (LCA + CSA) | lca (LCA only) | full (Full-Attention
                                                         # over [N ; S])
    csa_k: int = checked(8, ge=1)               # neighbours per behavior in CSA (ours)
    csa_tau: float = checked(0.1, gt=0)         # softmax temperature over their cosines (ours)
    csa_value: bool = False       # variant: a shared value projection inside CSA
    head_hidden: tuple[int, ...] = checked((256, 64), ge=1)
    dropout: float = checked(0.0, ge=0, lt=1)

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)

    def inactive(self) -> dict[str, str]:
        csa = ("csa_k", "csa_tau", "csa_value")
        return {} if self.attention == "est" else dict.fromkeys(csa, "with attention est (CSA)")


class CSAPattern(NamedTuple):
    idx: Tensor      # (..., L, k) neighbour positions
    weight: Tensor   # (..., L, k) fixed weights


class ESTLayer(nn.Module):
    def __init__(self, n_tokens: int, cfg: ESTConfig):
        super().__init__()
        d, self.heads = cfg.dim, cfg.heads
        self.norm_n, self.norm_s = RMSNorm(d), RMSNorm(d)
        self.q = TokenLinear(n_tokens, d, d, bias=False)      # token-specific
        self.o = TokenLinear(n_tokens, d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)             # shared by all behaviors
        self.csa = cfg.attention == "est"
        self.csa_v = nn.Linear(d, d, bias=False) if self.csa and cfg.csa_value else None
        if cfg.attention == "full":                           # behaviors become queries too
            self.q_s, self.o_s = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.ffn_norm_n, self.ffn_norm_s = RMSNorm(d), RMSNorm(d)
        self.ffn_n = TokenSwiGLU(n_tokens, d, cfg.ffn_mult)
        self.ffn_s = SwiGLU(d, cfg.ffn_mult)

    def _split(self, x: Tensor) -> Tensor:  # (..., d) -> (..., H, e)
        return split_heads(x, self.heads, dim=-2)

    def _behaviors_rest(self, s: Tensor, s_norm: Tensor, pattern: CSAPattern | None) -> Tensor:
        """The behavior side after attention: CSA within the sequence, then the shared FFN."""
        if self.csa:
            vals = self.csa_v(s_norm) if self.csa_v is not None else s_norm
            s = s + csa_apply(vals, pattern.idx, pattern.weight)
        return s + self.ffn_s(self.ffn_norm_s(s))

    def user_side(self, s_u: Tensor, pattern: CSAPattern | None) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """Candidate-free work on R_u (R, Lu, d): its K/V for LCA, and its next states."""
        sn = self.norm_s(s_u)
        k, v = [self._split(t) for t in self.kv(sn).chunk(2, -1)]
        return (k, v), self._behaviors_rest(s_u, sn, pattern)

    def candidate_side(self, n_tok: Tensor, s_c: Tensor, user_kv: tuple[Tensor, Tensor], mask_u: Tensor,
                       mask_c: Tensor, pattern: CSAPattern | None) -> tuple[Tensor, Tensor]:
        """n_tok (R, C, n, d), s_c (R, C, K, d) with R_u's cached K/V -> next n_tok, s_c."""
        nn_, sn = self.norm_n(n_tok), self.norm_s(s_c)
        k_c, v_c = [self._split(t) for t in self.kv(sn).chunk(2, -1)]
        att = attention_function("lca")(self._split(self.q(nn_)), *user_kv, mask_u, k_c, v_c, mask_c)  # (R, C, n, H, e)
        n_tok = n_tok + self.o(att.flatten(-2))
        n_tok = n_tok + self.ffn_n(self.ffn_norm_n(n_tok))
        return n_tok, self._behaviors_rest(s_c, sn, pattern)

    def full(self, n_tok: Tensor, s: Tensor, mask_s: Tensor, masked: frozenset, log: list | None):
        """Full-Attention over [N ; S]: n_tok (B, n, d), s (B, L, d), mask_s (B, L)."""
        n = n_tok.shape[1]
        nn_, sn = self.norm_n(n_tok), self.norm_s(s)
        q = split_heads(torch.cat([self.q(nn_), self.q_s(sn)], 1), self.heads)                    # (B, H, T, e)
        k, v = [split_heads(t, self.heads) for t in self.kv(torch.cat([nn_, sn], 1)).chunk(2, -1)]
        key_ok = torch.cat([mask_s.new_ones(mask_s.shape[0], n), mask_s], 1)                      # (B, T)
        allowed = key_ok[:, None, None, :] & block_mask(n, s.shape[1], masked, s.device)
        if log is None:
            out = attention_function("dense")(q, k, v, allowed)
        else:  # the analysis reads the attention maps
            p = attention_weights(q, k, allowed)                                                 # (B, H, T, T)
            log.append(p.detach())
            out = p @ v
        out = merge_heads(out)                                                                   # (B, T, d)
        n_tok = n_tok + self.o(out[:, :n])
        s = s + self.o_s(out[:, n:])
        n_tok = n_tok + self.ffn_n(self.ffn_norm_n(n_tok))
        return n_tok, s + self.ffn_s(self.ffn_norm_s(s))


def block_mask(n: int, length: int, masked: frozenset, device) -> Tensor:
    """(T, T) bool, T = n + length: False on the masked blocks of the [N ; S] attention map."""
    is_n = torch.arange(n + length, device=device) < n
    kind = lambda x: torch.where(x, 0, 1)  # noqa: E731  (0 = N, 1 = S)
    q_kind, k_kind = kind(is_n)[:, None], kind(is_n)[None, :]
    allowed = torch.ones(n + length, n + length, dtype=torch.bool, device=device)
    for b in masked:
        qk, kk = ("NS".index(b[0]), "NS".index(b[-1]))
        allowed &= ~((q_kind == qk) & (k_kind == kk))
    return allowed


@register("est", ESTConfig, "EST: lightweight cross-attention + content sparse attention over unified tokens")
class EST(UnifiedInputModel):
    def __init__(self, spec: DataSpec, cfg: ESTConfig):
        super().__init__()
        self.cfg = cfg
        self.inputs = UnifiedInputs(spec, cfg.embed_dim, cfg.dim, cfg.simtier_bins)
        self.n_tokens, d = self.inputs.n_tokens, cfg.dim
        self.layers = nn.ModuleList(ESTLayer(self.n_tokens, cfg) for _ in range(cfg.layers))
        self.head = MLP(self.n_tokens * d + d, cfg.head_hidden, 1, cfg.dropout)
        # Analysis hooks (Full-Attention only): blocks to mask, and a list that collects attention maps.
        self.masked_blocks: frozenset = frozenset()
        self.attention_log: list | None = None

    def _pattern(self, vecs: Tensor, mask: Tensor) -> CSAPattern | None:
        return CSAPattern(*content_topk(vecs, mask, self.cfg.csa_k, self.cfg.csa_tau)) if self.cfg.attention == "est" \
            else None

    def _predict(self, n_tok: Tensor, pooled: Tensor) -> Tensor:
        return self.head(torch.cat([n_tok.flatten(-2), pooled], -1)).squeeze(-1)

    # --- request scoring: R_u once per request, then any number of candidates -------------------------------
    def encode_user(self, context: Batch) -> UserState:
        if self.cfg.attention == "full":
            return super().encode_user(context)
        mask = context.hist_mask
        s_u = self.inputs.user_tokens(context.hist)                                       # (R, Lu, d)
        vecs = self.inputs.content.of_behaviors(context.hist)                             # (R, Lu, Dc)
        pattern = self._pattern(vecs, mask)                                               # once, for all layers
        kv = []
        for layer in self.layers:
            pair, s_u = layer.user_side(s_u, pattern)
            kv.append(pair)
        return UserState(context, kv, history=s_u)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor,
                         cand_hist: Tensor | None = None, cand_hist_time: Tensor | None = None) -> Tensor:
        if self.cfg.attention == "full":
            return super().score_candidates(state, cand_sparse, cand_dense, cand_hist, cand_hist_time)
        need_candidate_sequence(cand_hist)
        mask = state.context.hist_mask
        vecs = self.inputs.content.of_behaviors(state.context.hist)                       # (R, Lu, Dc)
        pooled_sum = (state.history * mask.unsqueeze(-1)).sum(1)                          # (R, d) over valid R_u
        # Candidates in chunks whose LCA scores stay within SCORE_BUDGET floats (cache-sized passes).
        r, c = cand_sparse.shape[:2]
        per_candidate = r * self.cfg.heads * self.n_tokens * (mask.shape[1] + cand_hist.shape[-2])
        step = max(1, SCORE_BUDGET // per_candidate)
        return torch.cat([self._score_chunk(state, vecs, pooled_sum, cand_sparse[:, a:a + step],
                                            cand_dense[:, a:a + step], cand_hist[:, a:a + step],
                                            cand_hist_time[:, a:a + step])
                          for a in range(0, c, step)], 1)

    def _score_chunk(self, state: UserState, vecs: Tensor, pooled_sum: Tensor, cand_sparse, cand_dense, cand_hist,
                     cand_hist_time) -> Tensor:
        mask_c = cand_hist_time > 0                                                       # (R, C, K)
        cvecs = self.inputs.content.of_behaviors(cand_hist)                               # (R, C, K, Dc)
        mask = state.context.hist_mask
        n_tok = self.inputs.non_behavioral(cand_sparse, cand_dense, vecs.unsqueeze(1), mask.unsqueeze(1), cvecs,
                                           mask_c)                                         # R_u broadcast over C
        s_c = self.inputs.cand_tokens(cand_hist)
        pattern = self._pattern(cvecs, mask_c)
        for layer, kv in zip(self.layers, state.caches):
            n_tok, s_c = layer.candidate_side(n_tok, s_c, kv, mask, mask_c, pattern)
        total = pooled_sum.unsqueeze(1) + (s_c * mask_c.unsqueeze(-1)).sum(-2)            # (R, C, d)
        count = mask.sum(1, keepdim=True) + mask_c.sum(-1)
        return self._predict(n_tok, total / count.clamp_min(1).unsqueeze(-1))

    # --- Full-Attention: no user-side reuse ------------------------------------------------------------------
    def score_pointwise(self, batch: Batch) -> Tensor:
        need_candidate_sequence(batch.cand_hist)
        n_tok, s_u, s_c = self.inputs.of_batch(batch)
        s, mask_s = torch.cat([s_u, s_c], 1), torch.cat([batch.hist_mask, batch.cand_hist_mask], 1)
        for layer in self.layers:
            n_tok, s = layer.full(n_tok, s, mask_s, self.masked_blocks, self.attention_log)
        pooled = (s * mask_s.unsqueeze(-1)).sum(1) / mask_s.sum(1, keepdim=True).clamp_min(1)
        return self._predict(n_tok, pooled)
