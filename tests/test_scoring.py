"""Candidate scoring: option lengths by difference, left padding, mean option log-prob (docs/algorithms.md,
"Training objective" and "Evaluation")."""

import torch
import torch.nn.functional as F

from zoft.scoring import classification_loss, collate, encode_examples, evaluate
from zoft.tasks import Example
from conftest import build_model

EXAMPLES = [
    Example("a charming and often affecting journey . It was", (" terrible", " great"), 1),
    Example("bleak It was", (" terrible", " great"), 0),
    Example("Does this mean that the movie is true? Yes or No?\n", ("Yes", "No", "Maybe"), 2),
]


def _reference_scores(model, tokenizer, ex: Example) -> torch.Tensor:
    """Unpadded, full-logits computation of each candidate's mean option log-prob."""
    out = []
    n_prompt = len(tokenizer(ex.prompt).input_ids)
    for cand in ex.candidates:
        ids = torch.tensor([tokenizer(ex.prompt + cand).input_ids])
        logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        tok_lp = logp.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
        out.append(tok_lp[n_prompt - 1:].mean())
    return torch.stack(out)


def test_option_len_is_the_token_difference(tokenizer):
    enc = encode_examples(tokenizer, EXAMPLES)
    ex = EXAMPLES[0]
    for row, n, cand in zip(enc[0].rows, enc[0].option_lens, ex.candidates):
        assert n == len(tokenizer(ex.prompt + cand).input_ids) - len(tokenizer(ex.prompt).input_ids)
        assert list(row) == tokenizer(ex.prompt + cand).input_ids


def test_left_padded_batch_scores_equal_unpadded_reference(tokenizer, tiny_model_dir):
    from zoft.models import load_model
    from zoft.scoring import candidate_scores

    model, tok, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    batch = collate(encode_examples(tok, EXAMPLES), tok.pad_token_id)
    with torch.inference_mode():
        scores = candidate_scores(model, batch)
        for i, ex in enumerate(EXAMPLES):
            ref = _reference_scores(model, tok, ex)
            assert torch.allclose(scores[i, :len(ex.candidates)], ref, atol=1e-5)
        assert torch.isinf(scores[0, 2])  # two-candidate examples pad the third column with −inf


def test_truncation_keeps_bos_and_the_option(tokenizer):
    long = Example("word " * 300 + "It was", (" great", " terrible"), 0)
    enc = encode_examples(tokenizer, [long], max_length=32)[0]
    assert all(len(r) == 32 and r[0] == tokenizer.bos_token_id for r in enc.rows)
    assert list(enc.rows[0][-enc.option_lens[0]:]) == tokenizer(long.prompt + " great").input_ids[-enc.option_lens[0]:]


def test_micro_batches_give_the_same_loss_and_eval_counts(tokenizer):
    model = build_model("llama", len(tokenizer))
    enc = encode_examples(tokenizer, EXAMPLES)
    with torch.inference_mode():
        full = classification_loss(model, [collate(enc, 0)])
        split = classification_loss(model, [collate(enc[:1], 0), collate(enc[1:], 0)])
    assert torch.allclose(full, split, atol=1e-6)
    result = evaluate(model, enc, 0, batch_size=2)
    assert result["num_examples"] == 3 and 0 <= result["accuracy"] <= 1
    assert abs(result["loss"] - float(full)) < 1e-5


SINGLE = [
    Example("Does this mean that the movie is true? Yes or No?\n", ("Yes", "No"), 0),
    Example("bleak and long . Does this mean that it is true? Yes or No?\n", ("Yes", "No", "It"), 2),
    Example("It was great\n", ("No", "Yes"), 1),
]


def test_single_token_candidates_share_one_row_and_score_the_same(tokenizer, tiny_model_dir):
    from zoft.models import load_model
    from zoft.scoring import candidate_scores, shares_prompt

    model, tok, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    enc = encode_examples(tok, SINGLE)
    assert all(shares_prompt(e) for e in enc)
    shared, per_candidate = collate(enc, tok.pad_token_id), collate(enc, tok.pad_token_id, share=False)
    assert shared.input_ids.shape[0] == 3 and per_candidate.input_ids.shape[0] == 7  # one row per example
    assert shared.input_ids.shape[1] == per_candidate.input_ids.shape[1] - 1          # the prompt only
    with torch.inference_mode():
        a, b = candidate_scores(model, shared), candidate_scores(model, per_candidate)
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        assert torch.allclose(a[~torch.isinf(a)], b[~torch.isinf(b)], atol=1e-5)
        for i, ex in enumerate(SINGLE):
            assert torch.allclose(a[i, :len(ex.candidates)], _reference_scores(model, tok, ex), atol=1e-5)
        la = classification_loss(model, [shared])
        lb = classification_loss(model, [per_candidate])
    assert torch.allclose(la, lb, atol=1e-6)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_a_batch_with_a_multi_token_candidate_keeps_one_row_per_candidate(tokenizer):
    from zoft.scoring import shares_prompt

    enc = encode_examples(tokenizer, [SINGLE[0], Example("x It was", (" a long word", " b"), 0)])
    assert shares_prompt(enc[0]) and not shares_prompt(enc[1])
    assert collate(enc, 0).candidate_tokens is None and collate(enc, 0).input_ids.shape[0] == 4
