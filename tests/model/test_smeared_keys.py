"""The built-in LM's smeared keys (BuiltinLMConfig.smeared_keys): a left-padded row and a row
decoded token by token through the KV cache give the same logits as the row alone, and a smear
weight of 1 is exactly the plain GPT with the same weights."""

from __future__ import annotations

import torch

from model.backbones import BuiltinLM, KVCache
from model.config import BuiltinLMConfig

CFG = BuiltinLMConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=64, smeared_keys=True)


def _lm(cfg: BuiltinLMConfig = CFG) -> BuiltinLM:
    torch.manual_seed(0)
    lm = BuiltinLM(cfg).eval()
    with torch.no_grad():
        for layer in lm.layers:
            if layer.attn.smear is not None:
                layer.attn.smear.copy_(torch.tensor([-1.5, 0.7]))  # mostly the previous key / mostly its own
    return lm


def test_left_padding_and_cache_give_the_row_alone():
    lm = _lm()
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = lm(input_ids=ids).logits
        padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
        padded = lm(input_ids=padded_ids, attention_mask=mask).logits[:, 3:]
        cache = KVCache()
        steps = [lm(input_ids=ids[:, :6], cache=cache, use_cache=True).logits]
        for t in range(6, 10):
            steps.append(lm(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits)
        cached = torch.cat(steps, 1)
    assert torch.allclose(padded, alone, atol=1e-5), (padded - alone).abs().max()
    assert torch.allclose(cached, alone, atol=1e-5), (cached - alone).abs().max()


def test_smear_weight_one_is_the_plain_gpt_and_smearing_changes_the_output():
    smeared, plain = _lm(), _lm(BuiltinLMConfig(**{**CFG.__dict__, "smeared_keys": False}))
    plain.load_state_dict({k: v for k, v in smeared.state_dict().items() if not k.endswith(".smear")})
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mixed = smeared(input_ids=ids).logits
        for layer in smeared.layers:
            layer.attn.smear.fill_(40.0)  # sigmoid(40) == 1 in float32: each key is its own
        assert torch.equal(smeared(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert (mixed - plain(input_ids=ids).logits).abs().max() > 1e-3
