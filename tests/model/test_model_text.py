"""Tokenizers (special tokens, padding) and the next-token loss policy."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import torch
import torch.nn.functional as F

from helpers.tiny_hf import make_tiny_tokenizer
from model.flamingo import IGNORE_INDEX, next_token_loss, text_labels
from model.tokenizer import END_OF_CHUNK_TOKEN, IMAGE_TOKEN, ByteTokenizer, HFTokenizer, SpecialTokens, load_tokenizer


def test_byte_tokenizer_special_tokens_and_round_trip():
    tok = ByteTokenizer()
    s = tok.special
    assert (s.n_base, s.image, s.end_of_chunk, s.pad, s.vocab_size, s.n_new) == (256, 256, 257, 258, 259, 3)
    assert tok.encode("<image>hi<|endofchunk|>") == [256, ord("h"), ord("i"), 257]
    text = "<image>un café ☕<|endofchunk|><image>"
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == "un café ☕"


def test_batch_encode_pads_left_or_right():
    tok = ByteTokenizer()
    ids, mask = tok.batch_encode(["ab", "<image>"], padding_side="left")
    assert ids.tolist() == [[97, 98], [258, 256]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = tok.batch_encode(["ab", "<image>"], padding_side="right")
    assert ids.tolist() == [[97, 98], [256, 258]] and mask.tolist() == [[1, 1], [1, 0]]


def test_hf_tokenizer_gets_new_special_tokens_after_base_vocab(tmp_path):
    path = make_tiny_tokenizer(tmp_path)
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    s = tok.special
    assert s.n_base == 300 and s.vocab_size == 303  # <image>, <|endofchunk|>, and a pad (the base has none)
    assert {s.image, s.end_of_chunk, s.pad} == {300, 301, 302}
    assert s.eos == 0
    ids = tok.encode(f"{IMAGE_TOKEN}a cat{END_OF_CHUNK_TOKEN}{IMAGE_TOKEN}")
    assert ids[0] == s.image and ids[-2:] == [s.end_of_chunk, s.image]  # never split into pieces
    assert all(i < s.n_base for i in ids[1:-2])
    assert tok.decode(ids) == "a cat"


def _special() -> SpecialTokens:
    return ByteTokenizer().special


def test_labels_policy_excludes_media_and_padding_only():
    s = _special()
    a, b = ord("a"), ord("b")
    ids = torch.tensor([[a, s.image, b, s.end_of_chunk, s.image, a, s.pad]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    labels = text_labels(ids, mask, s)
    x = IGNORE_INDEX
    assert labels.tolist() == [[a, x, b, s.end_of_chunk, x, a, x]]


def test_next_token_loss_is_cross_entropy_over_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 3], [4, IGNORE_INDEX, 5, 6]])
    # targets (shifted): row0 -> [2, I, 3] at positions 0, 2 ; row1 -> [I, 5, 6] at positions 1, 2
    picked = [(0, 0, 2), (0, 2, 3), (1, 1, 5), (1, 2, 6)]
    expected = sum(F.cross_entropy(logits[b, t][None], torch.tensor([y])) for b, t, y in picked) / len(picked)
    torch.testing.assert_close(next_token_loss(logits, labels), expected)


def test_sequence_without_targets_contributes_nothing_and_never_nan():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[1, 2, 3, 4, 5], [IGNORE_INDEX] * 5])
    torch.testing.assert_close(next_token_loss(logits, labels), next_token_loss(logits[:1], labels[:1]))
    empty = next_token_loss(logits, torch.full((2, 5), IGNORE_INDEX))
    assert empty.item() == 0.0 and not math.isnan(empty.item())
    empty.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_loss_ignores_non_finite_logits_at_ignored_positions():
    logits = torch.zeros(1, 3, 5)
    logits[0, 1] = float("-inf")  # a row that would be NaN under softmax, at a position with no target
    logits.requires_grad_()
    labels = torch.tensor([[0, 1, IGNORE_INDEX]])
    loss = next_token_loss(logits, labels)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(math.log(5)))  # position 0: uniform over 5 -> log 5
    assert torch.isfinite(logits.grad).all()


def test_model_batch_row_without_targets_changes_nothing():
    from model.factory import build_tiny_flamingo

    model, tok = build_tiny_flamingo()
    ids, mask = tok.batch_encode(["<image>", "<image>a caption"])  # row 0: nothing to predict
    media = torch.randn(2, 1, 3, 16, 16)
    labels = text_labels(ids, mask, tok.special)
    assert (labels[0] == IGNORE_INDEX).all()
    both = model(ids, mask, media, labels=labels).loss
    only_second = model(ids[1:], mask[1:], media[1:], labels=labels[1:]).loss
    assert torch.isfinite(both)
    torch.testing.assert_close(both, only_second)
