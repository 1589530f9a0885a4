"""The world's character-level tokenizer, built with the `tokenizers` library and wrapped as a
``PreTrainedTokenizerFast`` (so it saves and loads like any Hugging Face tokenizer)."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .corpus import ALPHABET

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of :data:`ALPHABET`, plus pad/bos/eos/unk; prompts get <bos>."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in ALPHABET:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split between every character; each one is then a word of the WordLevel model.
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    return fast
