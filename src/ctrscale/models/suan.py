"""SUAN and LightSUAN (Lai et al., RecSys 2025; design fixed in shared/spec/suan.md).

Target-aware sequence [b_1 .. b_L, candidate]: a behavior token is its n1 field embeddings concatenated
(width D = n1 * d); the candidate token puts its own ids in the same slots (zeros in behavior-only slots).
Stacked Unified Attention Blocks (UAB), pre-norm:
  x = Norm(E); E_self = causal MHA(x) + learned bias f1(time bucket) + f2(i - j)
  AFNet: E_cross = MHA(E_self -> profile tokens); gate from the mean over valid behaviors of E_self + E_cross
         (two branches, softmax per dimension); E <- E + w_self * E_self + w_cross * E_cross
  E <- E + SwiGLU(Norm(E))
Head: MLP([final candidate state, flattened profile, other candidate/context features]).

Because the encoder is causal and the AFNet gate sees behaviors only, behavior states never depend on the
candidate: `encode_user` runs the history once and caches every layer's K/V and gate; `score_candidates` then
pushes any number of candidates through the layers, each attending to the cached history and to itself only.
forward() is that same path with one candidate, so request scoring equals pointwise scoring by construction;
tests hold both equal to a dense reference over the full (L + 1)-token sequence.

LightSUAN = the same model with `local` (k) and `dilation` (r) set: history self-attention over the union of
the k most recent positions and every r-th one, computed in O(L (k + L / r)) (attention.local_dilated_attention),
and candidates see the same pattern from the position after the history. r = 1 gives back SUAN exactly.
Ablations A-G of the paper are config switches (VARIANTS); sizes size-1..size-5 are presets (SIZES).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..typed import checked
from .config import ModelConfig
from .attention import TimePositionBias, attention_function, merge_heads, split_heads
from .base import CTRModel, UserState
from .layers import ACTIVATIONS, MLP, ReluFFN, SwiGLU, make_norm, masked_mean, require_history
from .tables import FeatureEmbedding
from .registry import register

# (embed_dim d, layers, heads) of the paper's Table 4
SIZES = {"size-1": (8, 1, 1), "size-2": (8, 2, 2), "size-3": (16, 4, 4), "size-4": (32, 8, 8),
         "size-5": (144, 12, 12)}
# The paper's ablation variants (Tables 3 and 5) as config overrides
VARIANTS = {"A": {"ffn": "relu"}, "B": {"afnet": False}, "C": {"afnet_fusion": "add"},
            "D": {"target_aware": False}, "E": {"attention_bias": False}, "F": {"norm": "layer"},
            "G": {"prenorm": False}}


@dataclass
class SUANConfig(ModelConfig):
    PRESETS = {"size": {"": {"embed_dim": 8, "layers": 2, "heads": 2},
                        **{k: {"embed_dim": d, "layers": n, "heads": h} for k, (d, n, h) in SIZES.items()}}}
    size: str = checked("", choices=("", *SIZES))  # size-1..size-5: sets embed_dim, layers and heads unless given
    embed_dim: int | None = checked(None, ge=1)    # None: from `size` (8 without one)
    layers: int | None = checked(None, ge=1)       # None: from `size` (2)
    heads: int | None = checked(None, ge=1)        # None: from `size` (2)
    head_hidden: tuple[int, ...] = checked((1024, 512, 256), ge=1)
    head_activation: str = checked("relu", choices=tuple(ACTIVATIONS))  # dice: the paper's
    dropout: float = checked(0.0, ge=0, lt=1)
    ffn: str = checked("swiglu", choices=("swiglu", "relu"))        # A: relu
    afnet: bool = True               # B: False
    afnet_fusion: str = checked("gate", choices=("gate", "add"))    # C: add
    target_aware: bool = True        # D: False (candidate only in the head)
    attention_bias: bool = True      # E: False
    norm: str = checked("rms", choices=("rms", "layer"))            # F: layer
    prenorm: bool = True             # G: False (post-norm)
    local: int = checked(0, ge=0)    # LightSUAN window k (0: SUAN's full causal attention)
    dilation: int = checked(1, ge=1)  # LightSUAN dilation r
    max_pos: int = checked(2048, ge=1)  # relative positions beyond this share one bias entry

    def inactive(self) -> dict[str, str]:
        out = {"dilation": "with local > 0 (LightSUAN)"} if self.local == 0 else {}
        if not self.afnet:
            out["afnet_fusion"] = "with afnet"
        return out


@dataclass
class LightSUANConfig(SUANConfig):
    local: int = checked(4, ge=0)
    dilation: int = checked(2, ge=1)


class UAB(nn.Module):
    """One Unified Attention Block, split into its history pass and its candidate pass."""

    def __init__(self, dim: int, profile_dim: int, cfg: SUANConfig, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SUAN: token width {dim} (fields x embed_dim) is not divisible by {heads} heads")
        self.cfg, self.heads = cfg, heads
        self.norm1, self.norm2 = make_norm(cfg.norm, dim), make_norm(cfg.norm, dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.bias = TimePositionBias(cfg.max_pos) if cfg.attention_bias else None
        if cfg.afnet:
            self.cross_q = nn.Linear(dim, dim, bias=False)
            self.cross_kv = nn.Linear(profile_dim, 2 * dim, bias=False)
            self.cross_out = nn.Linear(dim, dim, bias=False)
            if cfg.afnet_fusion == "gate":
                self.gate_in = nn.Linear(dim, max(1, dim // 4))
                self.gate_self = nn.Linear(max(1, dim // 4), dim)
                self.gate_cross = nn.Linear(max(1, dim // 4), dim)
        self.ffn = SwiGLU(dim) if cfg.ffn == "swiglu" else ReluFFN(dim)

    def _cross(self, e_self: Tensor, profile: Tensor) -> Tensor:
        q, (k, v) = self.cross_q(e_self), self.cross_kv(profile).chunk(2, -1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))                      # keys: the n2 profile tokens
        return self.cross_out(merge_heads(attention_function("dense", "sdpa")(q, k, v)))

    def _fuse_and_ffn(self, e: Tensor, e_self: Tensor, e_cross: Tensor | None, gate: Tensor | None) -> Tensor:
        if e_cross is None:
            fused = e_self
        elif gate is None:
            fused = e_self + e_cross
        else:
            fused = gate[:, 0, None] * e_self + gate[:, 1, None] * e_cross
        if self.cfg.prenorm:
            e = e + fused
            return e + self.ffn(self.norm2(e))
        e = self.norm1(e + fused)
        return self.norm2(e + self.ffn(e))

    def history(self, e: Tensor, times: Tensor, valid: Tensor, profile: Tensor):
        """(B, L, D) behavior states -> next states, and the cache candidates need (K, V, gate)."""
        x = self.norm1(e) if self.cfg.prenorm else e
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))   # (B, H, N, Dh)
        cfg = self.cfg
        att = attention_function("causal")(q, k, v, times, valid, self.bias, cfg.local, cfg.dilation)
        e_self = self.out(merge_heads(att))
        e_cross = self._cross(e_self, profile) if cfg.afnet else None
        gate = None
        if cfg.afnet and cfg.afnet_fusion == "gate":
            g = torch.relu(self.gate_in(masked_mean(e_self + e_cross, valid, dim=1)))      # (B, D/4)
            gate = torch.softmax(torch.stack([self.gate_self(g), self.gate_cross(g)], 1), 1)  # (B, 2, D)
        return self._fuse_and_ffn(e, e_self, e_cross, gate), (k, v, gate)

    def candidates(self, e: Tensor, cache, t_cand: Tensor, times: Tensor, valid: Tensor, profile: Tensor):
        """(B, C, D) candidate states -> next states; each attends to the cached history and itself."""
        kh, vh, gate = cache
        x = self.norm1(e) if self.cfg.prenorm else e
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))   # (B, H, N, Dh)
        dilation = self.cfg.dilation if self.cfg.local else 1  # local 0: full attention, as for the history
        att = attention_function("candidate")(q, k, v, kh, vh, t_cand, times, valid, self.bias, self.cfg.local,
                                              dilation)
        e_self = self.out(merge_heads(att))
        e_cross = self._cross(e_self, profile) if self.cfg.afnet else None
        return self._fuse_and_ffn(e, e_self, e_cross, gate)


class SUAN(CTRModel):
    def __init__(self, spec: DataSpec, cfg: SUANConfig):
        super().__init__()
        d, layers, heads = cfg.embed_dim, cfg.layers, cfg.heads  # presets resolved (ModelConfig)
        require_history(spec, "SUAN")
        self.cfg = cfg
        self.emb = FeatureEmbedding(spec, d)
        dim = len(spec.hist) * d
        self.blocks = nn.ModuleList(UAB(dim, d, cfg, heads) for _ in range(layers))
        self.final_norm = make_norm(cfg.norm, dim) if cfg.prenorm else nn.Identity()
        rep = dim if cfg.target_aware else 2 * dim
        head_in = rep + self.emb.side_width
        self.head = MLP(head_in, cfg.head_hidden, 1, cfg.dropout, activation=cfg.head_activation)

    def encode_user(self, context: Batch) -> UserState:
        profile = self.emb.profile(context.sparse)                                     # (R, n2, d)
        e = self.emb.hist(context.hist).flatten(-2)                                    # (R, L, D)
        valid, times = context.hist_mask, context.hist_time
        caches = []
        for block in self.blocks:
            e, cache = block.history(e, times, valid, profile)
            caches.append(cache)
        return UserState(context, caches, history=e, profile=profile)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused
        r, c = cand_sparse.shape[:2]
        ctx = state.context
        token = self.emb.candidate_as_behavior(cand_sparse).flatten(-2)                # (R, C, D)
        if self.cfg.target_aware:
            e = token
            for block, cache in zip(self.blocks, state.caches):
                e = block.candidates(e, cache, ctx.time, ctx.hist_time, ctx.hist_mask, state.profile)
            rep = self.final_norm(e)
        else:  # variant D: the candidate meets the sequence only in the head
            pooled = masked_mean(self.final_norm(state.history), ctx.hist_mask, dim=1)
            rep = torch.cat([pooled.unsqueeze(1).expand(r, c, -1), token], -1)
        other = self.emb.other_flat(cand_sparse, cand_dense)
        profile = state.profile.flatten(-2).unsqueeze(1).expand(r, c, -1)
        return self.head(torch.cat([rep, profile, other], -1)).squeeze(-1)


register("suan", SUANConfig, "SUAN: stacked unified attention blocks over the target-aware sequence")(SUAN)
register("lightsuan", LightSUANConfig, "LightSUAN: SUAN with local + dilated sparse attention (k=4, r=2)")(SUAN)
