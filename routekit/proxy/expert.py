"""ProxyExpert: a small tuned model and its untuned twin, their files, and the vocabulary check.

A proxy expert (proxy-tuning, arXiv:2401.08565; DExperts) steers a base model at every
decoding step by ``alpha * (log p_tuned - log p_untuned)``. This file holds the pair, its
``expert_config.json`` (kind ``"proxy"``) and ``tuned/`` ``untuned/`` checkpoints, and the
check that a proxy gives every base token the base's id.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import ConfigError, ExpertFileError, TokenizerMismatchError
from ..experts import EXPERT_CONFIG, Expert, check_expert_kind, refuse_foreign_directory
from ..io import (
    atomic_directory,
    atomic_write_json,
    model_fingerprint,
    read_config,
    tokenizer_fingerprint,
)

FORMAT_VERSION = 1

class ProxyExpertConfig(BaseModel):
    """What ``expert_config.json`` of a saved proxy expert records."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the expert's name")
    kind: str = Field("proxy", description="always 'proxy' (SVF experts say 'svf')")
    format_version: int = Field(FORMAT_VERSION, description="layout version of the directory")
    model_type: str = Field(description="config.model_type of the proxy models")
    vocab_size: int = Field(description="tokens in the proxy tokenizer")
    base_tokenizer_fingerprint: str = Field(description="fingerprint of the base's tokenizer")
    tokenizer_fingerprint: str = Field(description="fingerprint of the proxy's own tokenizer")
    tuned_fingerprint: str = Field(description="routekit.io.model_fingerprint of tuned/")
    untuned_fingerprint: str = Field(description="routekit.io.model_fingerprint of untuned/")


def check_vocab_compatible(
    base_tokenizer: PreTrainedTokenizerBase, proxy_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Refuse a proxy tokenizer that gives any of the base's token strings another id.

    Every id below ``len(base_tokenizer)`` must name the same token string in both; the
    proxy may have extra tail tokens (the base never produces them; they are sliced off).
    Raises :class:`TokenizerMismatchError` naming the first differing token and both ids.
    """
    base_vocab = base_tokenizer.get_vocab()
    proxy_vocab = proxy_tokenizer.get_vocab()
    if base_vocab == proxy_vocab:
        return
    base_by_id = {i: t for t, i in base_vocab.items()}
    proxy_by_id = {i: t for t, i in proxy_vocab.items()}
    for i in range(len(base_tokenizer)):
        base_tok, proxy_tok = base_by_id.get(i), proxy_by_id.get(i)
        if base_tok == proxy_tok:
            continue
        if base_tok is None:
            raise TokenizerMismatchError(
                f"id {i} is unused in the base tokenizer but is {proxy_tok!r} in the proxy's; "
                "the proxy and the base must share a vocabulary. Use a proxy trained with the "
                "base's tokenizer."
            )
        proxy_id = proxy_vocab.get(base_tok)
        where = "is missing from the proxy's" if proxy_id is None else f"has id {proxy_id} in the proxy's"
        raise TokenizerMismatchError(
            f"token {base_tok!r} has id {i} in the base tokenizer but {where} (which gives id {i} "
            f"to {proxy_tok!r}); a proxy expert must give every base token the base's id. Use a "
            "proxy trained with the base's tokenizer (extra tokens after the base's last id are allowed)."
        )


def logits_width(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


class ProxyExpert(Expert):
    """A tuned small model and its untuned twin; their log-prob difference steers a base.

    ``tokenizer`` is the tokenizer the pair was trained with (needed to check it against a
    base's and to save the expert). Several experts may share one ``untuned`` model object;
    the processor then runs it once per step.
    """

    kind = "proxy"

    def __init__(
        self,
        tuned: PreTrainedModel,
        untuned: PreTrainedModel,
        name: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        base_tokenizer_fingerprint: str | None = None,
    ) -> None:
        for role, m in (("tuned", tuned), ("untuned", untuned)):
            if not isinstance(m, PreTrainedModel):
                raise ConfigError(
                    f"ProxyExpert {name!r}: {role} must be a transformers PreTrainedModel, got "
                    f"{type(m).__name__}."
                )
        t_type, u_type = tuned.config.model_type, untuned.config.model_type
        if t_type != u_type:
            raise ConfigError(
                f"ProxyExpert {name!r}: the untuned model is a {u_type!r} but the tuned one is a "
                f"{t_type!r}; the untuned model must be the tuned model's own starting point (same "
                "architecture family and vocabulary)."
            )
        t_width, u_width = logits_width(tuned), logits_width(untuned)
        if t_width != u_width:
            raise ConfigError(
                f"ProxyExpert {name!r}: the tuned model scores {t_width} tokens but the untuned one "
                f"{u_width}; they must share one vocabulary."
            )
        self.tuned = tuned
        self.untuned = untuned
        self.name = name
        self.tokenizer = tokenizer
        self.base_tokenizer_fingerprint = base_tokenizer_fingerprint

    @property
    def base_id(self) -> str | None:
        """The fingerprint of the base tokenizer this expert was made for (None if unknown)."""
        if self.base_tokenizer_fingerprint is not None:
            return self.base_tokenizer_fingerprint
        return tokenizer_fingerprint(self.tokenizer) if self.tokenizer is not None else None

    def __repr__(self) -> str:
        return f"ProxyExpert({self.name!r}, {self.tuned.config.model_type}, vocab={logits_width(self.tuned)})"

    @property
    def max_positions(self) -> int | None:
        """The proxies' context length (``max_position_embeddings``), or None if unbounded."""
        limits = [
            getattr(m.config, "max_position_embeddings", None) for m in (self.tuned, self.untuned)
        ]
        limits = [int(x) for x in limits if x]
        return min(limits) if limits else None

    def check_base(self, base_tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse a base whose tokenizer gives token strings other ids than this expert's."""
        if self.tokenizer is not None:
            check_vocab_compatible(base_tokenizer, self.tokenizer)
            return
        fp = self.base_tokenizer_fingerprint
        if fp is not None and fp != tokenizer_fingerprint(base_tokenizer):
            raise TokenizerMismatchError(
                f"proxy expert {self.name!r} was saved for a base tokenizer with fingerprint {fp!r}, "
                f"but this base's tokenizer has {tokenizer_fingerprint(base_tokenizer)!r}. Use the "
                "base it was made for."
            )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        base_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> Path:
        """Write ``tuned/`` and ``untuned/`` (safetensors + tokenizer) and ``expert_config.json``.

        ``save_pretrained(directory)``, as every expert kind. The directory appears in one
        rename, so a killed save leaves no half-written expert. The fingerprint recorded is the
        base tokenizer's: ``base_tokenizer`` when given (checked for compatibility), else the
        expert's own tokenizer (the base's when they share it). An expert built without a
        tokenizer saves ``base_tokenizer`` as its own (a proxy gives every base token the
        base's id); with neither it is refused.
        """
        directory = save_directory
        tok = self.tokenizer if self.tokenizer is not None else base_tokenizer
        if tok is None:
            raise ConfigError(
                f"proxy expert {self.name!r} has no tokenizer, so a saved copy could not be "
                "checked against a base. Build it with ProxyExpert(..., tokenizer=tok), or pass "
                "save_pretrained(directory, base_tokenizer=tok)."
            )
        if self.tokenizer is None and len(tok) > logits_width(self.tuned):
            raise ConfigError(
                f"proxy expert {self.name!r} scores {logits_width(self.tuned)} tokens but the "
                f"given base tokenizer has {len(tok)}; it is not this expert's vocabulary."
            )
        if base_tokenizer is not None and base_tokenizer is not tok:
            check_vocab_compatible(base_tokenizer, tok)
        base_fp = tokenizer_fingerprint(base_tokenizer if base_tokenizer is not None else tok)
        refuse_foreign_directory(Path(directory), (EXPERT_CONFIG, "tuned", "untuned"))
        with atomic_directory(directory) as tmp:
            for role, m in (("tuned", self.tuned), ("untuned", self.untuned)):
                m.save_pretrained(tmp / role, safe_serialization=True)
                tok.save_pretrained(tmp / role)
            cfg = ProxyExpertConfig(
                name=self.name,
                model_type=self.tuned.config.model_type,
                vocab_size=len(tok),
                base_tokenizer_fingerprint=base_fp,
                tokenizer_fingerprint=tokenizer_fingerprint(tok),
                tuned_fingerprint=model_fingerprint(self.tuned),
                untuned_fingerprint=model_fingerprint(self.untuned),
            )
            atomic_write_json(tmp / EXPERT_CONFIG, cfg.model_dump())
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        base_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> ProxyExpert:
        """Load an expert written by :meth:`save_pretrained`; refuses missing or altered files.

        With ``base_tokenizer`` a base whose vocabulary does not fit is refused here; without
        it the same check runs when the expert is applied (``routekit.mixture``)."""
        directory = Path(directory)
        check_expert_kind(directory, cls)
        cfg = read_config(directory / EXPERT_CONFIG, ProxyExpertConfig, "proxy expert config")
        models = {}
        for role in ("tuned", "untuned"):
            path = directory / role
            try:
                m = AutoModelForCausalLM.from_pretrained(
                    path, local_files_only=True, use_safetensors=True)
            except (OSError, ValueError, RuntimeError) as e:
                raise ExpertFileError(
                    f"proxy expert {str(directory)!r}: its {role} model cannot be loaded ({e}); "
                    "save the expert again."
                ) from e
            # The fingerprint is checked in the dtype the weights were saved in, before any
            # cast: a cast changes every value, so checking after it could not tell an altered
            # file from a converted one.
            recorded = getattr(cfg, f"{role}_fingerprint")
            if model_fingerprint(m) != recorded:
                raise ExpertFileError(
                    f"proxy expert {str(directory)!r}: the {role} weights have fingerprint "
                    f"{model_fingerprint(m)!r} but expert_config.json recorded {recorded!r}; the "
                    "files were altered. Save it again."
                )
            if dtype is not None or device is not None:
                m.to(device=device, dtype=dtype)
            models[role] = m.eval()
        try:
            tok = AutoTokenizer.from_pretrained(directory / "tuned", local_files_only=True)
        except (OSError, ValueError) as e:
            raise ExpertFileError(
                f"proxy expert {str(directory)!r}: its tokenizer cannot be loaded ({e})."
            ) from e
        expert = cls(
            models["tuned"],
            models["untuned"],
            name=cfg.name,
            tokenizer=tok,
            base_tokenizer_fingerprint=cfg.base_tokenizer_fingerprint,
        )
        if base_tokenizer is not None:
            expert.check_base(base_tokenizer)
        return expert
