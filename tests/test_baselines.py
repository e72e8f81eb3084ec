"""The EST paper's hierarchical baselines (DCNv2, AutoInt, RankMixer, HiFormer, the pooled MLP): each mechanism
against an explicit loop or the written formula, and the shared DIN-pooled inputs wired as the recipe needs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ctrscale.batch import CandidateSequence
from ctrscale.data.loader import Loader, LoaderConfig
from ctrscale.models.autoint import InteractingLayer
from ctrscale.models.dcnv2 import CrossLayer
from ctrscale.models.hiformer import HeterogeneousAttention
from ctrscale.models.layers import MLP
from ctrscale.models.tables import FeatureEmbedding
from ctrscale.models.rankmixer import PerTokenFFN, RankMixerBlock, mixing_heads, token_mixing
from ctrscale.models.registry import build_model

POOLED = [("dcnv2", {}), ("autoint", {}), ("rankmixer", {}), ("hiformer", {}), ("mlp", {"inputs": "pooled"})]


def _build(data, name, seed=0, **cfg):
    torch.manual_seed(seed)
    return build_model(data.spec, {"name": name, **cfg}, content=data.content()).eval()


def _batch(data, model, n=32, max_len=20, split="valid", listwise=False):
    cfg = LoaderConfig(batch_size=n, max_len=max_len, listwise=listwise, cand_seq=model.needs.cand_seq)
    return next(iter(Loader(data, split, cfg, seed=2)))


def _jitter(module, scale=0.1):
    """Move every parameter off its initial value (zero biases, unit norms) so a test sees all of them."""
    with torch.no_grad():
        for p in module.parameters():
            p += scale * torch.randn_like(p)
    return module


# --- DCNv2 -----------------------------------------------------------------------------------------------------
def test_cross_layer_equals_the_formula():
    torch.manual_seed(0)
    layer = _jitter(CrossLayer(5))
    x0, x = torch.randn(3, 5), torch.randn(3, 5)
    w, b = layer.w.weight, layer.w.bias
    want = torch.empty(3, 5)
    for n in range(3):
        for i in range(5):  # x_{l+1,i} = x0_i * (sum_j W_ij x_j + b_i) + x_i
            want[n, i] = x0[n, i] * (sum(w[i, j] * x[n, j] for j in range(5)) + b[i]) + x[n, i]
    torch.testing.assert_close(layer(x0, x), want)


def test_low_rank_cross_layer_equals_full_rank_with_w_equal_u_vt():
    torch.manual_seed(1)
    low = _jitter(CrossLayer(6, rank=2))
    full = CrossLayer(6)
    u, vt = low.w.weight, low.v.weight                  # (6, 2), (2, 6)
    with torch.no_grad():
        full.w.weight.copy_(u @ vt)
        full.w.bias.copy_(low.w.bias)
    x0, x = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(low(x0, x), full(x0, x))
    assert sum(p.numel() for p in low.parameters()) == 2 * 6 * 2 + 6


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_dcnv2_wiring(tiny, structure):
    """Cross layers on x0 = flatten(tokens), deep MLP beside (parallel) or after (stacked) them, then the head."""
    model = _build(tiny, "dcnv2", structure=structure, cross_layers=2, rank=4)
    b = _batch(tiny, model)
    with torch.no_grad():
        x0 = model.inputs(b).flatten(1)
        x = x0
        for layer in model.cross:
            x = x0 * (x @ layer.v.weight.T @ layer.w.weight.T + layer.w.bias) + x
        top = torch.cat([x, model.deep(x0)], -1) if structure == "parallel" else model.deep(x)
        torch.testing.assert_close(model(b), model.head(top).squeeze(-1))


def test_dcnv2_rejects_an_unknown_structure(tiny):
    with pytest.raises(ValueError, match="structure"):
        _build(tiny, "dcnv2", structure="sideways")


# --- AutoInt ---------------------------------------------------------------------------------------------------
def test_interacting_layer_equals_a_per_head_loop():
    torch.manual_seed(2)
    heads, e, d_in, t = 2, 3, 5, 4
    layer = InteractingLayer(d_in, heads, e)
    x = torch.randn(2, t, d_in)
    got = layer(x)
    for n in range(2):
        for i in range(t):
            outs = []
            for h in range(heads):
                rows = slice(h * e, (h + 1) * e)
                wq, wk, wv = layer.q.weight[rows], layer.k.weight[rows], layer.v.weight[rows]  # (e, d_in)
                scores = torch.stack([(wq @ x[n, i]) @ (wk @ x[n, j]) for j in range(t)])     # no scaling
                alpha = torch.softmax(scores, 0)
                outs.append(sum(alpha[j] * (wv @ x[n, j]) for j in range(t)))
            want = torch.relu(torch.cat(outs) + layer.res.weight @ x[n, i])
            torch.testing.assert_close(got[n, i], want)


def test_autoint_layer_widths(tiny):
    model = _build(tiny, "autoint", heads=3, head_dim=5, layers=3)
    assert [layer.q.in_features for layer in model.layers] == [model.cfg.dim, 15, 15]
    assert model.head[0].in_features == model.inputs.n_tokens * 15


# --- RankMixer -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [4, 2, 8])
def test_token_mixing_equals_a_loop(heads):
    """Slice h of every token, in token order, heads in order, re-cut into T tokens of width d."""
    t, d = 4, 8
    x = torch.randn(3, t, d)
    e = d // heads
    for n in range(3):
        flat = []
        for h in range(heads):
            for i in range(t):
                flat.extend(x[n, i, h * e:(h + 1) * e].tolist())
        want = torch.tensor([flat[i * d:(i + 1) * d] for i in range(t)])
        torch.testing.assert_close(token_mixing(x, heads)[n], want)


def test_token_mixing_with_as_many_heads_as_tokens_is_the_papers():
    t, d = 4, 8
    x = torch.randn(2, t, d)
    e = d // t
    mixed = token_mixing(x, t)
    for h in range(t):  # mixed token h = [x_1^h, ..., x_T^h]
        torch.testing.assert_close(mixed[:, h], torch.cat([x[:, i, h * e:(h + 1) * e] for i in range(t)], -1))


def test_mixing_heads_default():
    assert mixing_heads(8, 64, 0) == 8      # T divides d: the paper's H = T
    assert mixing_heads(13, 64, 0) == 8     # else the largest divisor of d below T
    assert mixing_heads(100, 64, 0) == 64
    assert mixing_heads(13, 64, 4) == 4     # an explicit choice wins


def test_per_token_ffn_equals_the_formula_and_owns_its_parameters():
    torch.manual_seed(3)
    n, d = 3, 4
    ffn = _jitter(PerTokenFFN(n, d, mult=2))
    x = torch.randn(2, n, d)
    out = ffn(x)
    for i in range(n):
        hid = torch.nn.functional.gelu(x[:, i] @ ffn.w1.weight[i] + ffn.w1.bias[i])
        torch.testing.assert_close(out[:, i], hid @ ffn.w2.weight[i] + ffn.w2.bias[i])
    with torch.no_grad():
        ffn.w1.weight[1] += 1.0
        ffn.w2.bias[1] += 1.0
    changed = (ffn(x) - out).abs().amax(dim=(0, 2))
    assert changed[1] > 0.1 and changed[0] == 0 and changed[2] == 0


def test_rankmixer_block_is_post_norm():
    torch.manual_seed(4)
    block = _jitter(RankMixerBlock(4, 8, heads=4, ffn_mult=2))
    x = torch.randn(2, 4, 8)

    def ln(v, norm):  # LayerNorm written out
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    s = ln(token_mixing(x, 4) + x, block.norm_mix)
    torch.testing.assert_close(block(x), ln(block.ffn(s) + s, block.norm_ffn))


# --- HiFormer --------------------------------------------------------------------------------------------------
def test_heterogeneous_attention_equals_a_per_token_loop():
    torch.manual_seed(5)
    t, d, heads = 4, 6, 2
    e = d // heads
    att = HeterogeneousAttention(t, d, heads)
    x = torch.randn(2, t, d)
    got = att(x)
    for n in range(2):
        # token i projects with its own matrices: W_Q^i, W_K^i, W_V^i (d, d) each, and W_O^i
        q = [x[n, i] @ att.qkv.weight[i][:, :d] for i in range(t)]
        k = [x[n, i] @ att.qkv.weight[i][:, d:2 * d] for i in range(t)]
        v = [x[n, i] @ att.qkv.weight[i][:, 2 * d:] for i in range(t)]
        for i in range(t):
            heads_out = []
            for h in range(heads):
                sl = slice(h * e, (h + 1) * e)
                w = torch.softmax(torch.stack([q[i][sl] @ k[j][sl] for j in range(t)]) / math.sqrt(e), 0)
                heads_out.append(sum(w[j] * v[j][sl] for j in range(t)))
            torch.testing.assert_close(got[n, i], torch.cat(heads_out) @ att.o.weight[i])


def test_hiformer_layer_is_pre_norm_residual(tiny):
    model = _build(tiny, "hiformer", layers=1)
    _jitter(model.layers[0])
    layer = model.layers[0]
    x = torch.randn(3, model.inputs.n_tokens, model.cfg.dim)

    def rms(v, norm):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    y = x + layer.att(rms(x, layer.norm_att))
    torch.testing.assert_close(layer(x), y + layer.ffn(rms(y, layer.norm_ffn)))


# --- MLP -------------------------------------------------------------------------------------------------------
def test_plain_mlp_is_unchanged(tiny):
    """inputs='plain' needs no content and no R_c, and computes MLP([field embeddings, mean history])."""
    torch.manual_seed(6)
    model = build_model(tiny.spec, {"name": "mlp"}).eval()
    assert model.needs.content is False and model.needs.cand_seq is None
    assert sorted({k.split(".")[0] for k in model.state_dict()}) == ["emb", "head"]
    b = next(iter(Loader(tiny, "valid", LoaderConfig(batch_size=16, max_len=12))))
    emb: FeatureEmbedding = model.emb
    rows = []
    for n in range(len(b)):
        hist = [emb.hist(b.hist[n, j][None, None])[0, 0].flatten() for j in range(b.hist.shape[1]) if b.hist_mask[n, j]]
        mean = torch.stack(hist).mean(0) if hist else torch.zeros(len(tiny.spec.hist) * emb.dim)
        rows.append(torch.cat([emb.flat(b.sparse[n:n + 1], b.dense[n:n + 1])[0], mean]))
    head: MLP = model.head
    with torch.no_grad():
        torch.testing.assert_close(model(b), head(torch.stack(rows)).squeeze(-1))


def test_pooled_mlp_reads_the_flattened_pooled_tokens(tiny):
    model = _build(tiny, "mlp", inputs="pooled", cand_seq_len=7)
    assert model.needs.content is True and model.needs.cand_seq == CandidateSequence(7, "content", 0)
    b = _batch(tiny, model)
    assert b.cand_hist.shape[1] == 7
    with torch.no_grad():
        x = model.inputs(b)
        assert x.shape == (len(b), len(tiny.spec.sparse) + len(tiny.spec.dense) + 3, model.cfg.dim)
        torch.testing.assert_close(model(b), model.head(x.flatten(1)).squeeze(-1))


def test_mlp_rejects_unknown_inputs(tiny):
    with pytest.raises(ValueError, match="inputs must be one of"):
        build_model(tiny.spec, {"name": "mlp", "inputs": "fancy"})


# --- what every pooled baseline shares -------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg", POOLED)
def test_pooled_baselines_load_content_and_candidate_behaviors(tiny, name, cfg):
    model = _build(tiny, name, cand_seq_len=5, cand_seq_by="category", cand_seq_source_len=40, **cfg)
    assert model.needs.content and model.needs.cand_seq == CandidateSequence(5, "category", 40)
    table = model.inputs.unified.content.content
    assert table.abs().sum() > 0                     # the registry handed over the content table
    b = _batch(tiny, model)
    assert b.cand_hist.shape[1] == 5
    with pytest.raises(ValueError, match="candidate-specific behaviors"):
        model(dataclasses.replace(b, cand_hist=None, cand_hist_time=None))
    with pytest.raises(ValueError, match="content"):
        build_model(tiny.spec, {"name": name, **cfg})


@pytest.mark.parametrize("name,cfg", POOLED)
def test_pooled_baselines_see_r_c(tiny, name, cfg):
    """The output depends on the candidate-specific behaviors (through DIN pooling and SimTier)."""
    model = _build(tiny, name, **cfg)
    b = _batch(tiny, model)
    without = dataclasses.replace(b, cand_hist=torch.zeros_like(b.cand_hist),
                                  cand_hist_time=torch.zeros_like(b.cand_hist_time))
    with torch.no_grad():
        assert not torch.allclose(model(b), model(without))


def test_pooled_mlp_request_scoring_and_padding(tiny):
    """The contract tests run the default (plain) MLP; the pooled one gets the two checks its inputs could break."""
    model = _build(tiny, "mlp", inputs="pooled")
    rb = _batch(tiny, model, n=64, listwise=True)
    assert rb.num_candidates > 1
    with torch.no_grad():
        torch.testing.assert_close(model.score_request(rb)[rb.mask], model(rb.flat()), rtol=1e-5, atol=1e-5)
        b = _batch(tiny, model, n=64, max_len=200, split="train")   # long enough that some histories are short
        assert (~b.hist_mask).any() and (~b.cand_hist_mask).any()
        noisy = dataclasses.replace(b, hist=b.hist.masked_fill(~b.hist_mask[..., None], 2),
                                    cand_hist=b.cand_hist.masked_fill(~b.cand_hist_mask[..., None], 2))
        torch.testing.assert_close(model(noisy), model(b))
