"""RankMixer: token mixing against a loop and the paper's H = T case, the per-token FFN, post-norm blocks."""
from __future__ import annotations

import pytest
import torch

from ctrscale.models.rankmixer import PerTokenFFN, RankMixerBlock, mixing_heads, token_mixing

from model_testkit import jitter


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
    ffn = jitter(PerTokenFFN(n, d, mult=2))
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
    block = jitter(RankMixerBlock(4, 8, heads=4, ffn_mult=2))
    x = torch.randn(2, 4, 8)

    def ln(v, norm):  # LayerNorm written out
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    s = ln(token_mixing(x, 4) + x, block.norm_mix)
    torch.testing.assert_close(block(x), ln(block.ffn(s) + s, block.norm_ffn))
