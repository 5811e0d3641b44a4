"""Tokenising examples for scoring and generation: what `zoft.scoring` and `zoft.generate` both read.

An example becomes one token row per candidate (prompt + candidate) and each candidate's option length, counted
by difference of the tokenised prompt and row, so merges across the boundary are counted right. Rows are
left-truncated (a leading BOS is kept) and left-padded.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zoft.errors import ConfigError
from zoft.tasks import Example, GenExample


@dataclass(frozen=True)
class Encoded:
    """One example tokenised: a token list per candidate, each candidate's option length, and the gold index.

    Generation examples have one row (prompt + target) and also carry the prompt alone (`prompt`, left-truncated
    so that `MAX_NEW_TOKENS` still fit) and the gold `answers`. `golds` lists every candidate counted correct
    (ReCoRD); empty means `(label,)`.
    """

    rows: tuple[tuple[int, ...], ...]
    option_lens: tuple[int, ...]
    label: int
    golds: tuple[int, ...] = ()
    prompt: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()

    @property
    def correct(self) -> tuple[int, ...]:
        return self.golds or (self.label,)

    def gold_only(self) -> "Encoded":
        """The gold row alone: what token-level cross-entropy trains on (COPA, ReCoRD, generation)."""
        return Encoded((self.rows[self.label],), (self.option_lens[self.label],), 0)


#: generation budget (docs/algorithms.md, "Evaluation"): at most 50 new tokens, cut at the first newline or EOS
MAX_NEW_TOKENS = 50


def _truncate_left(ids: list[int], max_length: int, bos: int | None) -> list[int]:
    """Drop tokens from the left so `ids` fits, keeping a leading BOS."""
    if len(ids) <= max_length:
        return ids
    keep_bos = bos is not None and ids[0] == bos
    return ids[:1] + ids[len(ids) - max_length + 1:] if keep_bos else ids[len(ids) - max_length:]


def encode_examples(tokenizer, examples: Sequence[Example | GenExample], max_length: int = 2048,
                    context: str = "") -> list[Encoded]:
    """Tokenise every (prompt, candidate) pair once, with left truncation that keeps BOS.

    `context` is put in front of every prompt: the in-context demonstrations of `zoft eval --icl`.
    """
    out = []
    bos = tokenizer.bos_token_id
    for ex in examples:
        prompt = context + ex.prompt
        prompt_ids = tokenizer(prompt).input_ids
        generation = isinstance(ex, GenExample)
        rows, lens = [], []
        for cand in ((ex.target,) if generation else ex.candidates):
            ids = tokenizer(prompt + cand).input_ids
            option_len = len(ids) - len(prompt_ids)
            if option_len < 1:
                raise ValueError(f"candidate {cand!r} adds no token to prompt {ex.prompt[-40:]!r}")
            if option_len + 1 > max_length:  # the candidate itself would be cut, or nothing of the prompt left
                raise ConfigError(f"--max-length {max_length} cannot hold the {option_len}-token candidate "
                                  f"{cand!r} after any prompt; raise --max-length above {option_len}")
            ids = _truncate_left(ids, max_length, bos)
            rows.append(tuple(ids))
            lens.append(option_len)
        if generation:
            gen_prompt = _truncate_left(prompt_ids, max(max_length - MAX_NEW_TOKENS, 2), bos)
            out.append(Encoded(tuple(rows), tuple(lens), 0, prompt=tuple(gen_prompt), answers=ex.answers))
        else:
            out.append(Encoded(tuple(rows), tuple(lens), ex.label, golds=ex.golds))
    return out


def fit_length(model, max_length: int, virtual_tokens: int = 0) -> int:
    """`max_length` capped at the positions the model has (`max_position_embeddings`, less prefix/prompt
    tokens): a longer row would index past the position table. MeZO's 2 048 equals OPT's table."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    return min(max_length, limit - virtual_tokens) if isinstance(limit, int) else max_length


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return tid
    return 0


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, positions) of rows left-padded to the longest one (not to a fixed length)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    # positions count real tokens only, so a left-padded row is positioned exactly like an unpadded one
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def forward_kwargs(model) -> set[str]:
    """The keyword arguments `model.forward` accepts (cached on the model)."""
    cached = getattr(model, "_zoft_forward_kwargs", None)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        model._zoft_forward_kwargs = cached
    return cached
