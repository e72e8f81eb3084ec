"""CAN (Bian et al., WSDM 2022, "CAN: Feature Co-Action Network for Click-Through Rate Prediction").

Co-action unit: the candidate's id of a field looks up P_induction in a table of its own; the vector is split and
reshaped into the weights (and biases) of a micro-MLP d_0 -> d_1 -> ... -> d_K (`coaction_dims`), laid out
[w_0 | b_0 | w_1 | b_1 | ...], w_i viewed (d_i, d_{i+1}). A feature that co-acts with the candidate looks up P_feed
(width d_0) in another table of its own and goes through that MLP: h_i = tanh(h_{i-1} w_i + b_i), no activation
after the last layer. The pairs: each behavior field with a candidate counterpart (spec.hist_to_sparse) with that
candidate field, the outputs sum-pooled over the valid behaviors (padding masked); and each user field with each
such candidate field (`user_coaction`).
Multi-order enhancement: the element-wise powers P_feed^c, c = 1..orders, each go through the MLP; the paper sums
them, H = sum_c MLP(P_feed^c) (`unit_output: sum`); `concat` is the authors' released code, which concatenates
every layer's output of every order.
Independence (the paper's three levels): parameters, co-action tables apart from the main embeddings; combinations,
one P_induction slice per (candidate field, feature) pair; orders, one MLP shared by the orders unless
`order_independent` (the paper calls that level optional; the released code keeps it off).
Beside it, DIN's target attention of the candidate over the history (din.py, TargetAttention), and the head MLP over
[all field embeddings, DIN interest, every unit's output].

Defaults follow the authors' released code where the paper gives no number: P_feed width 16 and a 16 -> 8 -> 4
micro-MLP, 3 orders shared by one MLP. Choices of ours:
- (ours) the micro-MLP has biases (the paper's formula has b_i; the released code leaves them out: coaction_bias).
- (ours) the user features co-act with every candidate field that has a behavior counterpart (item id and
  category), each user field having one P_feed table shared by those pairs.
- (ours) init: P_induction weight blocks ~ N(0, 1/d_i) (a Linear's scale), bias blocks 0; P_feed ~ N(0, 1/d_0);
  id 0 (padding) embeds to zeros in every table, so a missing candidate has a zero micro-MLP.
- (ours) the interest path beside the co-action units is DIN's target attention; the released code builds CAN on
  DIEN (GRU + attention-gated GRU with an auxiliary loss) and also feeds the sum-pooled history to the head. DIN
  keeps CAN's own contribution (the co-action units) comparable with the DIN baseline it is measured against.
- (ours) the head is DIN's (ReLU MLP over the concatenation), without the released code's batch norm and PReLU.
- user_coaction costs (1 + user fields) x unit_width floats per id of each inducing field: small on MovieLens
  (item 3.7K ids x 5 x 172), large on a catalogue of millions of items; set it false there.

Request scoring: encode_user embeds the history once per request (DIN keys, each behavior's P_feed powers, the user
fields' P_feed powers); score_candidates generates every candidate's micro-MLP weights and runs them over the cached
feeds as batched einsums over (R, C, U, O, L, d), no loop over candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batch import Batch, DataSpec
from ..errors import ConfigError
from ..typed import checked
from .attention import TargetAttention
from .base import CTRModel, UserState
from .config import ModelConfig
from .layers import MLP, require_history
from .registry import register
from .tables import EmbeddingTable, FeatureEmbedding


@dataclass
class CANConfig(ModelConfig):
    embed_dim: int = checked(16, ge=1)
    hidden: tuple[int, ...] = checked((200, 80), ge=1)
    attention_hidden: tuple[int, ...] = checked((80, 40), ge=1)
    attention_softmax: bool = False  # DIN's unnormalised weights
    dropout: float = checked(0.0, ge=0, lt=1)
    coaction_dims: tuple[int, ...] = checked((16, 8, 4), ge=1)  # P_feed width d_0, then each micro-MLP layer's
    coaction_bias: bool = True       # the micro-MLP's biases b_i (the released code: none)
    orders: int = checked(3, ge=1)   # multi-order enhancement: P_feed^1 .. P_feed^orders
    order_independent: bool = False  # one MLP per order (P_induction `orders` times as wide)
    unit_output: str = checked("sum", choices=("sum", "concat"))  # sum: the paper's; concat: the released code's
    user_coaction: bool = True       # the user fields co-act with the candidate too

    def __post_init__(self):
        super().__post_init__()
        if len(self.coaction_dims) < 2:
            raise ConfigError(f"coaction_dims: needs the feed width and at least one layer, got {self.coaction_dims}")

    def inactive(self) -> dict[str, str]:
        return {"order_independent": "with orders > 1"} if self.orders == 1 else {}


def unit_width(dims: tuple[int, ...], bias: bool) -> int:
    """Length of one micro-MLP's parameter vector [w_0 | b_0 | w_1 | b_1 | ...]."""
    return sum(i * o + (o if bias else 0) for i, o in zip(dims[:-1], dims[1:]))


def unpack(p: Tensor, dims: tuple[int, ...], bias: bool) -> list[tuple[Tensor, Tensor | None]]:
    """(..., unit_width) induction vectors -> per layer (w (..., d_i, d_{i+1}), b (..., d_{i+1}) or None)."""
    layers, at = [], 0
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        w = p[..., at:at + d_in * d_out].unflatten(-1, (d_in, d_out))
        at += d_in * d_out
        b = None
        if bias:
            b = p[..., at:at + d_out]
            at += d_out
        layers.append((w, b))
    return layers


def powers(x: Tensor, orders: int) -> Tensor:
    """(..., L, d) -> (..., orders, L, d): x, x^2, ..., x^orders element-wise (multi-order enhancement)."""
    out = [x]
    for _ in range(orders - 1):
        out.append(out[-1] * x)
    return torch.stack(out, -3)


def micro_mlp(feed: Tensor, layers: list[tuple[Tensor, Tensor | None]], mask: Tensor | None,
              pool_all: bool) -> list[Tensor]:
    """Every candidate's micro-MLP over every feed vector, outputs sum-pooled over the feed positions.

    feed (R, U, O, L, d_0): U co-action units, O orders, L positions (behaviors; 1 for a user field);
    layers: per layer w (R, C, U, O, d_i, d_{i+1}) and b (R, C, U, O, d_{i+1}) or None; mask (R, L) or None.
    Returns each layer's pooled output (R, C, U, O, d_{i+1}) if pool_all, else only the last layer's.

    The last layer has no activation, so it is applied to the pooled input of that layer: sum_l (h_l w + b) =
    (sum_l h_l) w + n b, with n the number of valid positions; only the hidden layers run per position."""
    *hidden, (w_last, b_last) = layers
    r, u, o, length, _ = feed.shape
    m = torch.ones(r, length, dtype=feed.dtype, device=feed.device) if mask is None else mask.to(feed.dtype)
    h, pooled = feed, []                                  # h: (R, U, O, L, C, d), the candidates innermost
    for i, (w, b) in enumerate(hidden):
        c, d_out = w.shape[1], w.shape[-1]
        if i == 0:  # one matmul per (request, unit, order): its L feeds x all candidates' weights (and biases)
            x = feed.flatten(0, 2)                                                       # (R*U*O, L, d_0)
            w = w.permute(0, 2, 3, 4, 1, 5).reshape(r * u * o, -1, c * d_out)           # (R*U*O, d_0, C*d_1)
            h = torch.bmm(x, w) if b is None else \
                torch.baddbmm(b.permute(0, 2, 3, 1, 4).reshape(r * u * o, 1, c * d_out), x, w)
            h = h.view(r, u, o, length, c, d_out)
        else:
            h = torch.einsum("ruolcd,rcuode->ruolce", h, w)
            if b is not None:
                h += b.permute(0, 2, 3, 1, 4).unsqueeze(3)
        h = h.tanh_()  # in place: (R, U, O, L, C, d_{i+1}) is the largest tensor of the model; autograd allows it
        if pool_all or i == len(hidden) - 1:
            sums = torch.matmul(m[:, None, None, None, :], h.flatten(-2)).view(r, u, o, c, d_out)
            pooled.append(sums.permute(0, 3, 1, 2, 4))                       # (R, C, U, O, d_{i+1})
    if hidden:
        out = torch.einsum("rcuod,rcuode->rcuoe", pooled[-1], w_last)
    else:
        out = torch.einsum("ruold,rl,rcuode->rcuoe", feed, m, w_last)
    if b_last is not None:
        out = out + m.sum(-1)[:, None, None, None, None] * b_last
    return (pooled if pool_all else []) + [out]


class CAN(CTRModel):
    def __init__(self, spec: DataSpec, cfg: CANConfig):
        super().__init__()
        require_history(spec, "CAN")
        self.cfg = cfg
        self.emb = FeatureEmbedding(spec, cfg.embed_dim)
        d_hist = len(spec.hist) * cfg.embed_dim
        self.attention = TargetAttention(d_hist, cfg.attention_hidden, cfg.attention_softmax)

        # Co-action units, grouped by inducing candidate field: its behavior counterparts, then the user fields.
        align = spec.hist_to_sparse
        inducing = sorted({a for a in align if a >= 0})
        users = spec.sparse_of_role("user") if cfg.user_coaction else []
        self._inducing = inducing
        self._pairs = {a: [("hist", j) for j, b in enumerate(align) if b == a] + [("user", k) for k in users]
                       for a in inducing}
        units = [u for a in inducing for u in self._pairs[a]]
        hist_units = [i for i, (kind, _) in enumerate(units) if kind == "hist"]
        user_units = [i for i, (kind, _) in enumerate(units) if kind == "user"]
        self._hist_fields = [units[i][1] for i in hist_units]
        self._user_fields = [units[i][1] for i in user_units]
        self.register_buffer("_hist_units", torch.tensor(hist_units, dtype=torch.long), persistent=False)
        self.register_buffer("_user_units", torch.tensor(user_units, dtype=torch.long), persistent=False)

        dims, width = cfg.coaction_dims, unit_width(cfg.coaction_dims, cfg.coaction_bias)
        self._per_order = cfg.orders if cfg.order_independent else 1
        self.induction = nn.ModuleDict({
            _name(spec.sparse[a]): _induction_table(spec.vocab_sizes[spec.field_vocab[spec.sparse[a]]],
                                             len(self._pairs[a]) * self._per_order, dims, cfg.coaction_bias)
            for a in inducing})
        self.feed_hist = nn.ModuleDict({
            _name(spec.hist[j]): _feed_table(spec.vocab_sizes[spec.field_vocab[f"hist.{spec.hist[j]}"]], dims[0])
            for j in self._hist_fields})
        self.feed_user = nn.ModuleDict({
            _name(spec.sparse[k]): _feed_table(spec.vocab_sizes[spec.field_vocab[spec.sparse[k]]], dims[0])
            for k in sorted(set(self._user_fields))})
        self._width = width
        out_per_unit = dims[-1] if cfg.unit_output == "sum" else cfg.orders * sum(dims[1:])
        self.coaction_width = len(units) * out_per_unit
        self.head = MLP(self.emb.out_flat + d_hist + self.coaction_width, cfg.hidden, 1, cfg.dropout)

    # --- user side: once per request ---------------------------------------------------------------------------------

    def encode_user(self, context: Batch) -> UserState:
        spec, orders = self.emb.spec, self.cfg.orders
        keys = self.emb.hist(context.hist).flatten(-2)                                   # (R, L, D)
        r, length = context.hist.shape[:2]
        d0 = self.cfg.coaction_dims[0]
        hist_feed = [self.feed_hist[_name(spec.hist[j])](context.hist[..., j]) for j in self._hist_fields]
        hist_feed = (powers(torch.stack(hist_feed, 1), orders) if hist_feed
                     else keys.new_zeros(r, 0, orders, length, d0))                       # (R, U_h, O, L, d_0)
        user_feed = [self.feed_user[_name(spec.sparse[k])](context.sparse[:, k]) for k in self._user_fields]
        user_feed = (powers(torch.stack(user_feed, 1).unsqueeze(2), orders) if user_feed
                     else keys.new_zeros(r, 0, orders, 1, d0))                            # (R, U_u, O, 1, d_0)
        return UserState(context, caches=[hist_feed, user_feed], history=keys)

    # --- candidates ---------------------------------------------------------------------------------------------

    def coaction(self, state: UserState, cand_sparse: Tensor) -> Tensor:
        """(R, C, F) candidates -> (R, C, coaction_width): every co-action unit's output."""
        r, c = cand_sparse.shape[:2]
        if not self._inducing:
            return cand_sparse.new_zeros(r, c, 0, dtype=state.history.dtype)
        cfg, orders = self.cfg, self.cfg.orders
        p = torch.cat([self.induction[_name(self.emb.spec.sparse[a])](cand_sparse[..., a])
                       .unflatten(-1, (len(self._pairs[a]), self._per_order, self._width)) for a in self._inducing],
                      2).expand(r, c, -1, orders, -1)                                    # (R, C, U, O, width)
        hist_feed, user_feed = state.caches
        parts = []
        for units, feed, mask in ((self._hist_units, hist_feed, state.context.hist_mask),
                                  (self._user_units, user_feed, None)):
            if len(units):
                layers = unpack(p[:, :, units], cfg.coaction_dims, cfg.coaction_bias)
                parts.append(micro_mlp(feed, layers, mask, pool_all=cfg.unit_output == "concat"))
        # units in (hist, user) order; the head's input layout only needs to be fixed
        if cfg.unit_output == "sum":
            out = [pooled[-1].sum(3) for pooled in parts]                                # (R, C, U, d_K)
        else:
            out = [torch.cat(pooled, -1).flatten(-2) for pooled in parts]               # (R, C, U, O * sum d)
        return torch.cat(out, 2).flatten(2)

    def score_candidates(self, state: UserState, cand_sparse: Tensor, cand_dense: Tensor, cand_hist=None,
                         cand_hist_time=None) -> Tensor:  # R_c unused
        r, c = cand_sparse.shape[:2]
        keys, mask = state.history, state.context.hist_mask                              # (R, L, D), (R, L)
        query = self.emb.candidate_as_behavior(cand_sparse).flatten(-2)                   # (R, C, D)
        every = lambda t: t.unsqueeze(1).expand(r, c, *t.shape[1:]).flatten(0, 1)  # noqa: E731  (R*C, ...)
        interest = self.attention(query.flatten(0, 1), every(keys), every(mask)).view(r, c, -1)  # (R, C, D)
        x = torch.cat([self.emb.flat(cand_sparse, cand_dense), interest, self.coaction(state, cand_sparse)], -1)
        return self.head(x).squeeze(-1)


def _name(field: str) -> str:
    return field.replace(".", "__")  # ModuleDict keys cannot contain dots


def _feed_table(vocab: int, dim: int) -> EmbeddingTable:
    t = EmbeddingTable(vocab, dim, padding_idx=0)
    with torch.no_grad():
        t.weight.normal_(std=dim ** -0.5)
        t.weight[0].zero_()
    return t


def _induction_table(vocab: int, n: int, dims: tuple[int, ...], bias: bool) -> EmbeddingTable:
    """n micro-MLP parameter vectors per id: weight blocks ~ N(0, 1/d_in), bias blocks 0, id 0 all zeros."""
    t = EmbeddingTable(vocab, n * unit_width(dims, bias), padding_idx=0)
    with torch.no_grad():
        rows = t.weight.view(vocab, n, -1)
        rows.zero_()
        for w, _ in unpack(rows, dims, bias):
            w.normal_(std=w.shape[-2] ** -0.5)
        t.weight[0].zero_()
    return t


register("can", CANConfig, "CAN: candidate-generated micro-MLPs co-acting with behaviors and user features, "
                           "beside DIN")(CAN)
