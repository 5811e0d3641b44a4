"""Greedy decoding for generation tasks (docs/algorithms.md, "Evaluation") and the answer metrics over a batch.

Prompts are left-padded, so every row's next token is read at the last position and positions count real tokens
only. Hugging Face and peft models decode with their KV cache (one token per forward after the prompt); zoft's
prefix/prompt wrappers, which build their own cache, re-run the growing sequence (slower, same tokens). Decoding
stops per row at EOS or at the first token whose text holds a newline, and after `MAX_NEW_TOKENS` at most.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zoft.encoding import MAX_NEW_TOKENS, Encoded, forward_kwargs, left_pad
from zoft.tasks.metrics import best_exact_match, best_f1


def _newline_tokens(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """Whether each token id's text contains a newline (cached per tokenizer and id)."""
    cache = tokenizer.__dict__.setdefault("_zoft_newline", {})
    out = []
    for i in ids.tolist():
        if i not in cache:
            cache[i] = "\n" in tokenizer.decode([i])
        out.append(cache[i])
    return torch.tensor(out, device=ids.device)


def _uses_cache(model) -> bool:
    from transformers import PreTrainedModel

    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()
    return isinstance(model, (PreTrainedModel, PeftModel))


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: Sequence[Sequence[int]], pad_id: int,
                    device: torch.device | str = "cpu", max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy continuations of `prompts` (token id lists), each cut at the first newline or EOS, stripped."""
    ids, mask, positions = (t.to(device) for t in left_pad(prompts, pad_id))
    accepted = forward_kwargs(model)
    eos = tokenizer.eos_token_id
    n = ids.shape[0]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    generated = [[] for _ in range(n)]
    cache = _uses_cache(model)
    past = None
    step_ids, step_mask, step_pos = ids, mask, positions
    for _ in range(max_new_tokens):
        kwargs = {"input_ids": step_ids, "attention_mask": step_mask, "use_cache": cache}
        if "position_ids" in accepted:
            kwargs["position_ids"] = step_pos
        if "logits_to_keep" in accepted:
            kwargs["logits_to_keep"] = 1
        if past is not None:  # transformers 5 names the cache `cache`; older releases `past_key_values`
            kwargs["cache" if "cache" in accepted else "past_key_values"] = past
        out = model(**kwargs)
        nxt = out.logits[:, -1].argmax(-1)
        for i in torch.nonzero(~done).flatten().tolist():
            generated[i].append(int(nxt[i]))
        stop = _newline_tokens(tokenizer, nxt)
        if eos is not None:
            stop |= nxt == eos
        done |= stop
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if cache:
            past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            step_ids, step_mask, step_pos = nxt[:, None], mask, positions[:, -1:]
        else:
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            step_ids, step_mask, step_pos = ids, mask, positions
    texts = []
    for tokens in generated:
        text = tokenizer.decode([t for t in tokens if t != eos], skip_special_tokens=True)
        texts.append(text.split("\n", 1)[0].strip())
    return texts


def generation_metrics(model, tokenizer, encoded: Sequence[Encoded], pad_id: int,
                       device: torch.device | str = "cpu") -> tuple[list[str], list[float], list[float]]:
    """(predictions, token F1 per example, exact match per example) of one batch, best over gold answers."""
    predictions = greedy_generate(model, tokenizer, [e.prompt for e in encoded], pad_id, device)
    f1s = [best_f1(p, e.answers) for p, e in zip(predictions, encoded)]
    ems = [best_exact_match(p, e.answers) for p, e in zip(predictions, encoded)]
    return predictions, f1s, ems
