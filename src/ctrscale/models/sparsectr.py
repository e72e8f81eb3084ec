"""SparseCTR (Lai et al. 2025; design fixed in shared/spec/sparsectr.md).

Mixed sequence [b_1 .. b_L, c_1 .. c_C]: a behavior token is its field embeddings concatenated and mapped to d;
a candidate token is its non-user fields (item, context, numerics) mapped to d. Profile e_U: the user fields,
kept out of the sequence. SparseBlocks, pre-norm:
  E <- E + EvoAttention(RMSNorm(E));  E <- E + SwiGLU(RMSNorm(E))
EvoAttention: Q from every token, K and V from behaviors only. Branches, multi-head each, gated per token
(alpha = softmax([A_global, A_transition, A_local] W_gate)), then W_O:
  global      chunk summaries (TimeChunking: cut at the |P|-1 largest time gaps; Aggregate = mean + 2-layer MLP);
              a behavior sees the chunks that end before its own chunk begins, a candidate sees all;
  transition  the last m behaviors of each chunk, strictly before the query (candidates: all);
  local       the w most recent behaviors up to the query (candidates: the last w) + the user token MLP(e_U).
RelTemporal (log2 time gap, sine of the hour gap, weekend mismatch; per-head learnable slopes) is added to the
logits of every branch; chunks carry their mean time.
Head: MLP(ReLU(E_C W4) * sigmoid(flatten(e_U) W5)), BCE over every real candidate of every request (listwise).

Because keys come from behaviors only, behavior states never depend on candidates: encode_user runs the history
once and caches each layer's key sets; score_candidates then scores any number of candidates against them, and
candidates never see each other. forward() is that path with one candidate.

Presets S1-S4 (SPARSITY) set (|P|, m, w); ablations A1-A4, B1-B4 (VARIANTS) and the alternatives of the
paper's Figure 2 (ALTERNATIVES) are config switches. The kernels live in attention/evo.py,
the chunking in attention/chunks.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import DataNeeds, Batch, DataSpec
from ..typed import ConfigError, check_heads, checked
from .config import ModelConfig
from .attention import (
    CHUNKINGS,
    ENCODINGS,
    Chunks,
    RelativeEncoding,
    attention_function,
    chunk_ids,
    make_chunks,
    merge_heads,
    split_heads,
)
from .base import CTRModel, UserState
from .layers import MLP, RMSNorm, SwiGLU, require_history
from .tables import FeatureEmbedding
from .registry import register

# (|P| chunks, m transition behaviors per chunk, w local behaviors) of the paper's Figure 3
SPARSITY = {"S1": (8, 1, 2), "S2": (16, 2, 5), "S3": (16, 3, 10), "S4": (32, 4, 20)}
# The paper's ablations (Table 3) as config overrides
VARIANTS = {"A1": {"attention": "full"}, "A2": {"global_branch": False}, "A3": {"transition_branch": False},
            "A4": {"local_branch": False}, "B1": {"encoding": "none"}, "B2": {"rel_time": False},
            "B3": {"rel_hour": False}, "B4": {"rel_weekend": False}}
# The alternatives of the paper's Figure 2 (sparse attention, chunking, relative encoding)
ALTERNATIVES = {"dilated": {"attention": "dilated"}, "linear": {"attention": "linear", "encoding": "none"},
                "fixed-chunks": {"chunking": "fixed"}, "similarity-chunks": {"chunking": "similarity"},
                "t5": {"encoding": "t5"}, "alibi": {"encoding": "alibi"}, "rope": {"encoding": "rope"},
                "hstu-bias": {"encoding": "hstu"}}
ATTENTIONS = ("evo", "full", "dilated", "linear")


@dataclass
class SparseCTRConfig(ModelConfig):
    embed_dim: int = checked(32, ge=1)         # per field
    dim: int = checked(32, ge=1)               # token width d
    layers: int = checked(2, ge=1)
    heads: int = checked(8, ge=1)
    head_hidden: tuple[int, ...] = checked((32,), ge=1)
    sparsity: str = checked("S2", choices=("", *SPARSITY))  # preset for chunks, transition, window; a value set
                                                            # below wins over it
    chunks: int | None = checked(None, ge=1)   # |P|
    transition: int | None = checked(None, ge=1)  # m
    window: int | None = checked(None, ge=1)   # w
    attention: str = checked("evo", choices=ATTENTIONS)  # evo | full (variant A1) | dilated | linear (alternatives)
    global_branch: bool = True       # A2: False
    transition_branch: bool = True   # A3: False
    local_branch: bool = True        # A4: False
    chunking: str = checked("time", choices=CHUNKINGS)   # time | fixed | similarity
    dilation: int = checked(8, ge=1)           # dilated alternative: every r-th behavior, counted from the most recent
    encoding: str = checked("reltemporal", choices=ENCODINGS)  # reltemporal | t5 | alibi | rope | hstu | none (B1)
    rel_time: bool = True            # B2: False
    rel_hour: bool = True            # B3: False
    rel_weekend: bool = True         # B4: False

    PRESETS = {"sparsity": {k: {"chunks": p, "transition": m, "window": w} for k, (p, m, w) in SPARSITY.items()}}

    def __post_init__(self):
        super().__post_init__()
        check_heads(self.dim, self.heads)
        self.resolved()
        self.branches()

    def resolved(self) -> tuple[int, int, int]:
        """(|P|, m, w): each key as given, else from the sparsity preset (ModelConfig's one precedence rule)."""
        p, m, w = self.chunks, self.transition, self.window
        if None in (p, m, w):
            raise ConfigError("chunks, transition and window: set all three, or a sparsity preset")
        return p, m, w

    def inactive(self) -> dict[str, str]:
        branches = self.branches()
        out = {}
        if not ("global" in branches or ("transition" in branches and self.attention == "evo")):
            out.update(dict.fromkeys(("chunks", "transition", "chunking"),
                                     "with attention evo and its global or transition branch"))
        if "local" not in branches:
            out["window"] = "with the local branch"
        if self.attention in ("full", "linear"):
            out.update(dict.fromkeys(("global_branch", "transition_branch", "local_branch"),
                                     "with attention evo or dilated"))
        elif self.attention == "dilated":
            out["global_branch"] = "with attention evo"
        if self.attention != "dilated":
            out["dilation"] = "with attention dilated"
        if self.encoding != "reltemporal":
            out.update(dict.fromkeys(("rel_time", "rel_hour", "rel_weekend"), "with encoding reltemporal"))
        return out

    def branches(self) -> tuple[str, ...]:
        if self.attention in ("full", "linear"):
            return (self.attention,)
        on = {"global": self.global_branch and self.attention == "evo", "transition": self.transition_branch,
              "local": self.local_branch}
        names = tuple(b for b in ("global", "transition", "local") if on[b])
        if not names:
            raise ConfigError("every EvoAttention branch is switched off (global_branch, transition_branch, "
                              "local_branch)")
        return names


@dataclass
class _Sequence:
    """Per-forward facts every layer shares."""
    valid: Tensor                # (R, L)
    times: Tensor                # (R, L)
    pos: Tensor                  # (L,)
    chunks: Chunks | None
    trans_idx: Tensor | None     # (R, K) transition (or dilated) key positions
    trans_valid: Tensor | None   # (R, K)


class EvoAttention(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: SparseCTRConfig):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SparseCTR: dim {dim} is not divisible by {heads} heads")
        self.heads, self.window = heads, cfg.resolved()[2]
        self.branches = cfg.branches()
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        if "global" in self.branches:
            self.agg_k, self.agg_v = MLP(dim, (dim,), dim), MLP(dim, (dim,), dim)
        if len(self.branches) > 1:
            self.gate = nn.Linear(len(self.branches) * dim, len(self.branches), bias=False)
        self.enc = RelativeEncoding(cfg.encoding, heads, dim // heads, cfg.rel_time, cfg.rel_hour, cfg.rel_weekend)

    def _heads(self, x: Tensor) -> Tensor:  # (R, N, D) -> (H, R, N, Dh): heads first (attention/evo.py)
        return split_heads(x, self.heads, dim=0)

    def _fuse(self, outs: list[Tensor]) -> Tensor:
        outs = [merge_heads(o, dim=0) for o in outs]                                 # (R, N, D) each
        if len(outs) == 1:
            return self.o(outs[0])
        alpha = torch.softmax(self.gate(torch.cat(outs, -1)), -1)                     # (R, N, branches)
        return self.o(sum(alpha[..., i:i + 1] * o for i, o in enumerate(outs)))

    def behaviors(self, x: Tensor, user: Tensor | None, seq: _Sequence, outputs: bool = True):
        """(R, L, D) normed behavior states -> attention output (None unless `outputs`: the last layer's behavior
        states feed nothing), and the key sets candidates need."""
        enc, n = self.enc, seq.valid.shape[1]
        q = enc.rotate(self._heads(self.q(x)), seq.pos)
        k, v = self.kv(x).chunk(2, -1)
        k, v = enc.rotate(self._heads(k), seq.pos), self._heads(v)
        ku = vu = None
        if user is not None:  # the user token's key and value, (H, R, Dh)
            ku, vu = (self._heads(t) for t in self.kv(user).chunk(2, -1))
        ti, pi = seq.times.unsqueeze(-1), seq.pos.unsqueeze(-1).float()
        shared_keys = attention_function("shared_keys")
        outs, cache = [], {}
        if "global" in self.branches:
            ch = seq.chunks
            kp, vp = (self._heads(agg(ch.members @ merge_heads(t, dim=0)))
                      for agg, t in ((self.agg_k, k), (self.agg_v, v)))
            if outputs:
                p = torch.arange(1, ch.valid.shape[1] + 1, device=x.device)
                allowed = (p < ch.id.unsqueeze(-1)) & ch.valid.unsqueeze(1)         # (R, L, P)
                bias = enc.bias_mask(ti, ch.time.unsqueeze(1), pi, ch.pos.unsqueeze(1), allowed)
                outs.append(shared_keys(q, kp, vp, bias, allowed.any(-1)))
            cache["global"] = (kp, vp, ch.valid, ch.time, ch.pos)
        if "transition" in self.branches:
            idx, ok = seq.trans_idx, seq.trans_valid
            take = idx[None, :, :, None].expand(self.heads, -1, -1, k.shape[-1])
            kt, vt = k.gather(2, take), v.gather(2, take)
            tt, pt = seq.times.gather(1, idx), idx.float()
            if outputs:
                allowed = (idx.unsqueeze(1) < seq.pos.view(1, n, 1)) & ok.unsqueeze(1)  # strictly before
                bias = enc.bias_mask(ti, tt.unsqueeze(1), pi, pt.unsqueeze(1), allowed)
                outs.append(shared_keys(q, kt, vt, bias, allowed.any(-1)))
            cache["transition"] = (kt, vt, ok, tt, pt)
        if "local" in self.branches:
            w = self.window
            if outputs:
                outs.append(attention_function("local_window")(q, k, v, seq.times, seq.valid, w, enc, ku, vu))
            cache["local"] = (k[:, :, -w:], v[:, :, -w:], seq.valid[:, -w:], seq.times[:, -w:],
                              seq.pos[-w:].float(), ku, vu)
        if "full" in self.branches:  # variant A1: causal full attention, the same bias
            if outputs:
                outs.append(attention_function("causal_full")(q, k, v, seq.times, seq.valid, enc))
            cache["full"] = (k, v, seq.valid, seq.times, seq.pos.float())
        if "linear" in self.branches:
            if outputs:
                outs.append(attention_function("linear")(q, k, v, seq.valid))
            phi_k = (F.elu(k) + 1) * seq.valid.unsqueeze(-1)
            cache["linear"] = (phi_k.transpose(-1, -2) @ v, phi_k.sum(2))                # (H, R, Dh, Dh), (H, R, Dh)
        return (self._fuse(outs) if outputs else None), cache

    def candidates(self, x: Tensor, cache: dict, n: int, request_time: Tensor) -> Tensor:
        """(R, C, D) normed candidate states, at position n (after the history) and the request time (R,) ->
        attention output against the cached key sets."""
        at = torch.full((1,), n, device=x.device)
        q = self.enc.rotate(self._heads(self.q(x)), at)
        tq, pq = request_time.view(-1, 1, 1), at.float()
        outs = []
        for name in self.branches:
            if name == "linear":
                kv, z = cache["linear"]
                phi_q = F.elu(q) + 1
                outs.append((phi_q @ kv) / (phi_q @ z.unsqueeze(-1)).clamp_min(1e-6))
                continue
            kk, vv, ok, tk, pk = cache[name][:5]
            bias = self.enc.bias_mask(tq, tk.unsqueeze(-2), pq, pk.unsqueeze(-2), ok.unsqueeze(1))  # (H, R, 1, K)
            if name == "local" and cache[name][5] is not None:  # the user token: always visible, no bias
                ku, vu = cache[name][5:]
                kk, vv = torch.cat([kk, ku.unsqueeze(2)], 2), torch.cat([vv, vu.unsqueeze(2)], 2)
                ok = torch.cat([ok, torch.ones_like(ok[:, :1])], 1)
                bias = F.pad(bias, (0, 1))
            outs.append(attention_function("shared_keys")(q, kk, vv, bias, ok.any(-1, keepdim=True)))
        return self._fuse(outs)


class SparseBlock(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: SparseCTRConfig):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = EvoAttention(dim, heads, cfg)
        self.ffn = SwiGLU(dim, mult=3)

    def behaviors(self, e: Tensor, user: Tensor | None, seq: _Sequence, outputs: bool = True):
        att, cache = self.attn.behaviors(self.norm1(e), user, seq, outputs)
        if not outputs:
            return None, cache
        e = e + att
        return e + self.ffn(self.norm2(e)), cache

    def candidates(self, e: Tensor, cache: dict, n: int, request_time: Tensor) -> Tensor:
        e = e + self.attn.candidates(self.norm1(e), cache, n, request_time)
        return e + self.ffn(self.norm2(e))


class SparseCTR(CTRModel):
    @classmethod
    def needs_for(cls, cfg) -> DataNeeds:
        return DataNeeds(listwise=True)  # trained on whole requests unless data.listwise says otherwise

    def __init__(self, spec: DataSpec, cfg: SparseCTRConfig):
        super().__init__()
        require_history(spec, "SparseCTR")
        self.cfg, (self.n_chunks, self.m, _) = cfg, cfg.resolved()
        self.needs_chunks = "global" in cfg.branches() or ("transition" in cfg.branches() and cfg.attention == "evo")
        e, d = cfg.embed_dim, cfg.dim
        self.emb = FeatureEmbedding(spec, e)
        n_user = len(spec.sparse_of_role("user"))
        self.behavior_in = nn.Linear(len(spec.hist) * e, d)
        self.candidate_in = nn.Linear(self.emb.side_width - n_user * e, d)
        self.user_token = MLP(n_user * e, (d,), d) if n_user else None
        self.blocks = nn.ModuleList(SparseBlock(d, cfg.heads, cfg) for _ in range(cfg.layers))
        self.final_norm = RMSNorm(d)
        self.w4 = nn.Linear(d, d)
        self.w5 = nn.Linear(n_user * e, d) if n_user else None
        self.head = MLP(d, tuple(cfg.head_hidden), 1)

    def _sequence(self, tokens: Tensor, context: Batch) -> _Sequence:
        valid, times = context.hist_mask, context.hist_time
        r, n = valid.shape
        pos = torch.arange(n, device=valid.device)
        chunks, idx, ok = None, None, None
        if self.needs_chunks:
            ids = chunk_ids(times, valid, self.n_chunks, self.cfg.chunking, tokens.detach())
            chunks = make_chunks(ids, times, self.n_chunks, self.m)
            idx, ok = chunks.trans_idx, chunks.trans_valid
        if self.cfg.attention == "dilated":
            idx = torch.arange(n - 1, -1, -self.cfg.dilation, device=valid.device).flip(0).expand(r, -1)
            ok = valid.gather(1, idx)
        return _Sequence(valid, times, pos, chunks, idx, ok)

    def encode_user(self, context: Batch) -> UserState:
        profile = self.emb.profile(context.sparse).flatten(-2)                        # (R, n_user * e)
        e = self.behavior_in(self.emb.hist(context.hist).flatten(-2))                 # (R, L, d)
        seq = self._sequence(e, context)
        user = self.user_token(profile) if self.user_token is not None else None
        caches = []
        for i, block in enumerate(self.blocks):
            e, cache = block.behaviors(e, user, seq, outputs=i + 1 < len(self.blocks))
            caches.append(cache)
        return UserState(context, caches, profile=profile)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused
        e = self.candidate_in(self.emb.other_flat(cand_sparse, cand_dense))           # (R, C, d)
        for block, cache in zip(self.blocks, state.caches):
            e = block.candidates(e, cache, state.context.hist_time.shape[1], state.context.time)
        rep = torch.relu(self.w4(self.final_norm(e)))
        if self.w5 is not None:
            rep = rep * torch.sigmoid(self.w5(state.profile)).unsqueeze(1)
        return self.head(rep).squeeze(-1)


register("sparsectr", SparseCTRConfig, "SparseCTR: time-chunked three-branch EvoAttention + RelTemporal "
         "(listwise; S2 preset)")(SparseCTR)
