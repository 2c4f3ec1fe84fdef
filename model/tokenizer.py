"""Tokenizers with Flamingo's special tokens.

`<image>` marks where a media goes and `<|endofchunk|>` ends the text that belongs to it;
the spellings are OpenFlamingo's so its few-shot prompts work unchanged. New tokens get
ids after the base vocabulary (`n_base ... vocab_size-1`); the model gives exactly these
ids trainable embedding/output rows and keeps the base vocabulary frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

IMAGE_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
PAD_TOKEN = "<PAD>"  # added only when the base tokenizer has no pad token
N_BYTES = 256


@dataclass(frozen=True)
class SpecialTokens:
    """Ids the model needs; `vocab_size - n_base` new rows are trainable."""

    n_base: int
    vocab_size: int
    image: int
    end_of_chunk: int
    pad: int
    eos: int | None = None
    bos: int | None = None  # only when the base tokenizer starts every encoding with it

    @property
    def n_new(self) -> int:
        return self.vocab_size - self.n_base


class FlamingoTokenizer:
    """Common interface: text <-> ids, plus padding a batch into tensors."""

    special: SpecialTokens
    name: str

    def encode(self, text: str) -> list[int]:
        """A prompt: `<image>`/`<|endofchunk|>` in it are the special tokens (plus BOS/EOS as the base
        tokenizer adds them)."""
        raise NotImplementedError

    def encode_text(self, text: str) -> list[int]:
        """Data: plain text, no BOS/EOS, and a literal "<image>" in it stays text (web pages about
        SVG's `<image>` element must not create a media slot)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.special.vocab_size

    def batch_encode(
        self, texts: Sequence[str], padding_side: str = "right", max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), padded with the pad id. Generation wants padding_side="left"."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        encoded = [self.encode(t)[:max_length] if max_length else self.encode(t) for t in texts]
        length = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), length), self.special.pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            span = slice(length - len(e), length) if padding_side == "left" else slice(0, len(e))
            ids[row, span] = torch.tensor(e, dtype=torch.long)
            mask[row, span] = 1
        return ids, mask


class ByteTokenizer(FlamingoTokenizer):
    """UTF-8 bytes (ids 0..255) + `<image>`, `<|endofchunk|>`, `<PAD>`: no files, no vocabulary to ship."""

    name = "byte"

    def __init__(self) -> None:
        self._specials = [IMAGE_TOKEN, END_OF_CHUNK_TOKEN, PAD_TOKEN]
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self._specials) + ")")
        self.special = SpecialTokens(
            n_base=N_BYTES, vocab_size=N_BYTES + 3, image=N_BYTES, end_of_chunk=N_BYTES + 1, pad=N_BYTES + 2
        )

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self._specials:
                ids.append(N_BYTES + self._specials.index(piece))
            elif piece:
                ids.extend(piece.encode("utf-8"))
        return ids

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i < N_BYTES:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens and i < self.special.vocab_size:
                out.append(self._specials[i - N_BYTES])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer(FlamingoTokenizer):
    """A Hugging Face tokenizer from a local path, extended with the Flamingo special tokens."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.name = str(path)
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        n_base = len(self.tok)
        self.tok.add_tokens([IMAGE_TOKEN, END_OF_CHUNK_TOKEN], special_tokens=True)
        if self.tok.pad_token is None:
            self.tok.add_special_tokens({"pad_token": PAD_TOKEN})
        image, eoc = self.tok.convert_tokens_to_ids([IMAGE_TOKEN, END_OF_CHUNK_TOKEN])
        if min(image, eoc) < n_base:
            raise ValueError(f"{path}: {IMAGE_TOKEN}/{END_OF_CHUNK_TOKEN} already in the base vocabulary")
        with_specials = self.tok("a", add_special_tokens=True)["input_ids"]
        bos = self.tok.bos_token_id
        adds_bos = bos is not None and len(with_specials) > 1 and with_specials[0] == bos  # Llama, OPT; not GPT-2
        self.special = SpecialTokens(
            n_base=n_base,
            vocab_size=len(self.tok),
            image=image,
            end_of_chunk=eoc,
            pad=self.tok.pad_token_id,
            eos=self.tok.eos_token_id,
            bos=bos if adds_bos else None,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def load_tokenizer(path: str | None) -> FlamingoTokenizer:
    """`None` -> the built-in byte tokenizer; otherwise a local Hugging Face tokenizer directory."""
    return ByteTokenizer() if path is None else HFTokenizer(path)
