"""BatchSampler: every row's token in one go, matching transformers' own processors row by row."""

from __future__ import annotations

import pytest
import torch

from bot.config import GenerationSettings
from bot.llm.batch_sampler import BatchSampler
from tests.support.recording import no_host_traffic
from tests.support.reference_sampling import logits_processors

VOCAB = 200

# A mixed batch: each setting's meaning from bot/llm/decoding.py.
MIXED = [
    GenerationSettings(do_sample=False, repetition_penalty=1.0),                   # plain greedy
    GenerationSettings(do_sample=False, repetition_penalty=1.8),                   # penalised greedy
    GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.3),
    GenerationSettings(do_sample=True, temperature=1.5, top_p=1.0, repetition_penalty=1.0),
    GenerationSettings(do_sample=True, temperature=0.0, top_p=0.5, repetition_penalty=1.2),  # greedy: temperature 0
]
GREEDY_ROWS = [0, 1, 4]


def reference(params: GenerationSettings, seen: list[int], row: torch.Tensor) -> torch.Tensor:
    """transformers' processors applied to this row alone."""
    ids = torch.tensor([seen], dtype=torch.long)
    return logits_processors(params)(ids, row[None].float())[0]


def mixed_sampler(generator: torch.Generator):
    """The MIXED rows in scattered slots of a larger sampler, each with a random prompt."""
    sampler = BatchSampler(capacity=8, vocab_size=VOCAB, device="cpu")
    slots = [6, 1, 3, 0, 7]
    prompts = [torch.randint(0, VOCAB, (30,), generator=generator).tolist() for _ in MIXED]
    for slot, params, prompt in zip(slots, MIXED, prompts):
        sampler.add(slot, params, prompt)
    return sampler, slots, prompts


def test_processed_scores_and_greedy_tokens_match_transformers_step_after_step():
    generator = torch.Generator().manual_seed(0)
    sampler, slots, seen = mixed_sampler(generator)
    for _step in range(8):
        # Logits of a real model's size range, some negative, some positive: the penalty's two branches.
        logits = torch.randn(len(MIXED), VOCAB, generator=generator) * 3
        processed = sampler.processed_scores(logits, slots)
        for row, params in enumerate(MIXED):
            expected = reference(params, seen[row], logits[row])
            assert torch.equal(torch.isinf(processed[row]), torch.isinf(expected)), (row, _step)
            assert torch.allclose(processed[row], expected), (row, _step)

        tokens = sampler.choose(logits, slots, generator=generator)
        for row in GREEDY_ROWS:
            assert tokens[row] == reference(MIXED[row], seen[row], logits[row]).argmax()
        for row, token in enumerate(tokens.tolist()):
            assert token in range(VOCAB)
            assert not torch.isinf(processed[row, token])  # never a token top-p removed
            seen[row].append(token)


def test_the_mixed_batch_exercises_what_it_claims():
    """Guards test 1: the penalty changes seen scores, top-p removes some tokens of the top-p row only."""
    generator = torch.Generator().manual_seed(1)
    sampler, slots, prompts = mixed_sampler(generator)
    logits = torch.randn(len(MIXED), VOCAB, generator=generator) * 3
    processed = sampler.processed_scores(logits, slots)
    removed = torch.isinf(processed).sum(dim=-1).tolist()
    assert removed[2] > 0 and removed[0] == removed[1] == removed[3] == removed[4] == 0
    assert not torch.equal(processed[1], logits[1])   # penalised greedy
    assert torch.equal(processed[0], logits[0])       # plain greedy untouched
    assert torch.equal(processed[4].argmax(), reference(MIXED[4], prompts[4], logits[4]).argmax())


def test_sampling_follows_the_processed_distribution():
    vocab, draws = 10, 20_000
    params = GenerationSettings(do_sample=True, temperature=0.8, top_p=0.8, repetition_penalty=1.5)
    sampler = BatchSampler(capacity=draws, vocab_size=vocab, device="cpu")
    logits_row = torch.randn(vocab, generator=torch.Generator().manual_seed(2))
    prompt = [1, 4, 7]
    for slot in range(draws):  # the same row many times: one batch draws them all
        sampler.add(slot, params, prompt)
    slots = list(range(draws))
    logits = logits_row.expand(draws, vocab)

    expected = reference(params, prompt, logits_row)
    probs = expected.softmax(dim=-1)
    assert torch.isinf(expected).any()  # top-p does remove tokens here

    tokens = sampler.choose(logits, slots, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(tokens, minlength=vocab).float()
    assert counts[torch.isinf(expected)].sum() == 0  # removed tokens are never drawn
    total_variation = 0.5 * (counts / draws - probs).abs().sum()
    assert total_variation < 0.02, total_variation


def test_a_slot_starts_clean_after_remove_and_add():
    params = GenerationSettings(do_sample=False, repetition_penalty=2.0)
    sampler = BatchSampler(capacity=2, vocab_size=50, device="cpu")
    sampler.add(0, params, [3, 5, 8])
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(4)).abs() + 1
    chosen = sampler.choose(logits, [0])
    assert sampler.seen[0].sum() == 4

    sampler.remove(0)
    assert not sampler.seen[0].any()
    sampler.add(0, params, [10])
    assert sampler.seen[0].nonzero().flatten().tolist() == [10]
    processed = sampler.processed_scores(logits, [0])
    assert torch.allclose(processed[0], reference(params, [10], logits[0]))
    assert processed[0, chosen[0]] == logits[0, chosen[0]]  # the old row's token is no longer penalised


def test_logits_wider_than_the_tokenizer_and_ids_outside_the_logits():
    """A model's logits may be wider than its tokenizer; prompt ids the logits cannot score are ignored,
    as transformers ignores them."""
    vocab = 64
    params = GenerationSettings(do_sample=False, repetition_penalty=1.5)
    sampler = BatchSampler(capacity=1, vocab_size=vocab, device="cpu")
    sampler.add(0, params, [2, vocab - 1, vocab + 5])
    logits = torch.zeros(1, vocab)
    logits[0, vocab - 1] = 10.0  # the top token lies past a (smaller) tokenizer's end
    assert sampler.choose(logits, [0]).tolist() == [vocab - 1]
    assert sampler.seen[0].nonzero().flatten().tolist() == [2, vocab - 1]
    with pytest.raises(ValueError):
        sampler.choose(torch.zeros(1, vocab + 1), [0])


def test_choose_does_not_sync_with_the_host():
    generator = torch.Generator().manual_seed(5)
    sampler, slots, _ = mixed_sampler(generator)
    logits = torch.randn(len(MIXED), VOCAB, generator=generator).to(torch.bfloat16)

    with no_host_traffic(copies_to_device=False):  # a new batch's slot index is copied in once
        tokens = sampler.choose(logits, slots, generator=generator)
    assert tokens.device == logits.device
    assert tokens.dtype == torch.long and tokens.shape == (len(MIXED),)


def test_top_p_edges_match_transformers():
    """top_p 0 keeps only the most likely token; top_p 1 keeps every token, even those whose
    probability underflows to 0 (a wide spread of scores), as transformers skips the warper there."""
    rows = [GenerationSettings(do_sample=True, temperature=1.0, top_p=0.0, repetition_penalty=1.0),
            GenerationSettings(do_sample=True, temperature=1.0, top_p=1.0, repetition_penalty=1.0),
            GenerationSettings(do_sample=True, temperature=0.5, top_p=0.95, repetition_penalty=1.1)]
    sampler = BatchSampler(capacity=3, vocab_size=VOCAB, device="cpu")
    for slot, params in enumerate(rows):
        sampler.add(slot, params, [0, 1, 2])
    logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(6)) * 3
    logits[:, :20] -= 300.0  # exp() of these underflows: probability exactly 0
    processed = sampler.processed_scores(logits, list(range(len(rows))))
    for row, params in enumerate(rows):
        expected = reference(params, [0, 1, 2], logits[row])
        assert torch.equal(torch.isinf(processed[row]), torch.isinf(expected)), row
        assert torch.allclose(processed[row], expected), row
    assert torch.isfinite(processed[0]).sum() == 1 and torch.isfinite(processed[1]).all()
