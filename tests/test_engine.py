"""The batching engine: batched answers equal lone ones, channel caches change nothing but
the work done, and cancellation, limits and failures leave the engine serving others.

Most tests run the tiny random SmolLM3 (fast). As built, its weights are so small that
every prompt gets the same greedy answer (one token repeated), which would make "equal"
prove nothing; `varied_backend` scales its weights up, so that answers wander through the
vocabulary and depend on every token of the prompt. Same architecture (NoPE layer included).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
import torch

from bot.config import GenerationSettings
from bot.core.cleaning import clean_reply
from bot.llm.engine import BatchingEngine
from bot.core.tokens import common_prefix_length
from bot.llm.kv_cache import PrefixCache
from bot.llm.detokenize import IncrementalText
from bot.llm.transformers_backend import TransformersBackend
from bot.llm.port import GenerationFailed, GenerationTimeout, ModelBusy
from tests.support.engines import chat, load_tiny
from tests.support.models import generate, kept_bytes, stream
from tests.support.recording import graphs_on_the_cpu
from tests.support.store_queries import count_turns
from tests.support.waiting import until

GREEDY = GenerationSettings(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)
PENALISED = dataclasses.replace(GREEDY, repetition_penalty=1.3)
LONG = dataclasses.replace(GREEDY, max_new_tokens=4000)
PROMPTS = [
    chat("Hi"),
    chat("Tell me a long story about a dragon who loves tea and lives far away in the cold mountains."),
    chat("What is two plus two?", "Four.", "And three plus three? Please explain your reasoning step by step."),
    chat("Write a poem about the sea."),
]


@pytest.fixture(scope="module")
def tiny_backend(tiny_smollm3_dir) -> TransformersBackend:
    return load_tiny(tiny_smollm3_dir)


@pytest.fixture(scope="module")
def varied_backend(tiny_smollm3_dir) -> TransformersBackend:
    return load_tiny(tiny_smollm3_dir, weight_scale=10.0)


async def first_delta_then_park(engine: BatchingEngine, messages, params, started: asyncio.Event, **kwargs):
    """Consume a stream until its first text arrives, then keep it open (it holds its place)."""
    async for _ in stream(engine, messages, params, **kwargs):
        started.set()


# Batches -----------------------------------------------------------------------------


async def test_answers_decoded_together_equal_answers_decoded_alone(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    settings = [GREEDY, PENALISED, GREEDY, PENALISED]  # each row keeps its own settings in the batch
    alone = [await generate(engine, p, s) for p, s in zip(PROMPTS, settings)]
    assert engine.counters.largest_batch == 1
    together = await asyncio.gather(*(generate(engine, p, s) for p, s in zip(PROMPTS, settings)))
    assert together == alone
    assert len(set(alone)) == len(alone)  # different prompts, different answers: the rows did not mix
    assert engine.counters.largest_batch == len(PROMPTS)


async def test_rows_joining_and_leaving_mid_way_answer_as_model_generate_alone(varied_backend, make_engine):
    """Three slots for eight replies of different lengths, each started once the previous one has
    begun: rows join a batch already decoding, leave at different steps, and their slots are taken
    again, while every answer stays transformers' own generate() for that prompt alone."""
    engine = make_engine(varied_backend, max_batch=3)
    cases = [(PROMPTS[i % 4], dataclasses.replace(GREEDY if i % 2 else PENALISED, max_new_tokens=4 + 3 * i))
             for i in range(8)]
    assert await answers_started_one_after_another(engine, cases) == await generated_alone(varied_backend, cases)
    assert engine.counters.largest_batch == 3


async def generated_alone(backend, cases) -> list[str]:
    """transformers' own generate() for each (prompt, settings), one prompt at a time."""
    from bot.llm.worker import ModelWorker

    reference = ModelWorker(backend, timeout_s=120)
    try:
        return [await generate(reference, prompt, params) for prompt, params in cases]
    finally:
        reference.close()


async def answers_started_one_after_another(engine, cases) -> list[str]:
    """Each (prompt, settings) asked once the previous answer has begun (or ended), all answered
    together from then on."""
    tasks = []
    for prompt, params in cases:
        begun = asyncio.Event()
        tasks.append(asyncio.create_task(collect_after(stream(engine, prompt, params), begun)))
        await asyncio.wait([asyncio.create_task(begun.wait()), tasks[-1]], return_when=asyncio.FIRST_COMPLETED)
    return list(await asyncio.gather(*tasks))


async def collect_after(pieces, begun: asyncio.Event) -> str:
    text = ""
    async for piece in pieces:
        text += piece
        begun.set()
    return text


async def test_eager_attention_answers_like_sdpa_alone_and_in_a_batch(varied_backend, tiny_smollm3_dir,
                                                                       make_engine):
    """What `attention = "auto"` picks on a GPU (eager: SDPA is slow there with a padding mask)
    gives the same answers as the model's default, alone and in a batch."""
    from bot.llm.engine import attention_for

    assert (attention_for("auto", "cuda"), attention_for("auto", "cpu"), attention_for("sdpa", "cuda")) == (
        "eager", None, "sdpa")
    by_default = [await generate(make_engine(varied_backend, attention="auto"), p, GREEDY) for p in PROMPTS]
    assert varied_backend.model.config._attn_implementation == "sdpa"  # auto leaves a CPU model as it is
    eager = make_engine(load_tiny(tiny_smollm3_dir, weight_scale=10.0), attention="eager")
    assert eager.model.config._attn_implementation == "eager"
    assert [await generate(eager, p, GREEDY) for p in PROMPTS] == by_default
    assert list(await asyncio.gather(*(generate(eager, p, GREEDY) for p in PROMPTS))) == by_default
    assert eager.counters.largest_batch == len(PROMPTS)


async def test_the_real_model_answers_the_same_in_a_batch(embedded_worker, make_engine):
    engine = make_engine(embedded_worker.backend)
    greedy = GenerationSettings(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)
    prompts = PROMPTS[:3]
    alone = [await generate(engine, p, greedy) for p in prompts]
    together = await asyncio.gather(*(generate(engine, p, greedy) for p in prompts))
    assert together == alone
    assert alone[0] == await generate(embedded_worker, prompts[0], greedy)  # and as generate(model, ) answers
    assert engine.counters.largest_batch == len(prompts)


async def test_max_new_tokens_is_honoured_per_row(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    short, longer = dataclasses.replace(GREEDY, max_new_tokens=3), dataclasses.replace(GREEDY, max_new_tokens=9)
    await asyncio.gather(generate(engine, PROMPTS[0], short), generate(engine, PROMPTS[1], longer))
    assert engine.counters.generated_tokens == 3 + 9  # the tiny model never says <|im_end|> this early


async def test_repetition_penalty_is_applied(tiny_backend, make_engine):
    engine = make_engine(tiny_backend)
    without = await generate(engine, PROMPTS[1], GREEDY)
    with_penalty = await generate(engine, PROMPTS[1], PENALISED)
    assert len(set(without)) == 1  # greedy: the same character over and over
    assert with_penalty != without


async def test_sampling_settings_are_applied(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    greedy = await generate(engine, PROMPTS[1], GREEDY)
    hot = dataclasses.replace(GREEDY, do_sample=True, temperature=5.0, top_p=1.0)
    assert await generate(engine, PROMPTS[1], hot) != greedy  # a hot sample wanders off the greedy path
    assert await generate(engine, PROMPTS[1], dataclasses.replace(hot, top_p=0.0)) == greedy  # only the best is left
    assert await generate(engine, PROMPTS[1], dataclasses.replace(hot, temperature=0.0)) == greedy  # 0 reads as greedy


# Channel caches ----------------------------------------------------------------------


async def cached_and_fresh(engine: BatchingEngine, prompt, params) -> tuple[str, str]:
    return await generate(engine, prompt, params, channel=1), await generate(engine, prompt, params)


async def check_that_cached_turns_equal_fresh_ones(engine: BatchingEngine, params) -> None:
    first = PROMPTS[2]
    answer = await generate(engine, first, params, channel=1)
    # As the service does: the stored (cleaned) answer goes into the channel's next prompt.
    next_turn = first + [{"role": "assistant", "content": clean_reply(answer) or "ok"},
                         {"role": "user", "content": "Thanks! Now something else, please."}]
    cached, fresh = await cached_and_fresh(engine, next_turn, params)
    assert cached == fresh
    reused_when_appended = engine.counters.reused_tokens
    assert reused_when_appended > 40  # the history really came from the cache
    # An older turn reads differently now (edited, or rendered otherwise by the template):
    # the cache is cut back to where the tokens part ways, and the rest is run again.
    edited = [dict(m) for m in next_turn]
    edited[2]["content"] = "Four, of course."
    cached, fresh = await cached_and_fresh(engine, edited, params)
    assert cached == fresh
    assert 0 < engine.counters.reused_tokens - reused_when_appended < reused_when_appended


async def test_cached_turns_equal_fresh_ones(varied_backend, make_engine):
    await check_that_cached_turns_equal_fresh_ones(make_engine(varied_backend), GREEDY)


async def test_cached_turns_equal_fresh_ones_on_the_real_model(embedded_worker, make_engine):
    greedy = GenerationSettings(do_sample=False, max_new_tokens=8, repetition_penalty=1.1)
    await check_that_cached_turns_equal_fresh_ones(make_engine(embedded_worker.backend), greedy)


async def test_the_least_recently_used_channel_cache_is_evicted(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    await generate(engine, PROMPTS[0], GREEDY, channel=1)
    one_channel = kept_bytes(engine.prefix_cache)
    engine.prefix_cache.budget_bytes = int(2.5 * one_channel)  # room for two channels
    await generate(engine, PROMPTS[0], GREEDY, channel=2)
    await generate(engine, PROMPTS[0], GREEDY, channel=1)  # channel 1 is now the most recent
    await generate(engine, PROMPTS[0], GREEDY, channel=3)
    assert engine.prefix_cache.keys() == [1, 3]
    assert kept_bytes(engine.prefix_cache) <= engine.prefix_cache.budget_bytes


def test_prefix_cache_refuses_an_entry_larger_than_its_budget():
    cache = PrefixCache(budget_bytes=100)
    big = [(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4))]  # 320 bytes
    cache.put("a", list(range(10)), big)
    assert cache.keys() == [] and kept_bytes(cache) == 0


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0


def test_slots_hold_rows_in_place_and_a_step_masks_by_their_lengths():
    from types import SimpleNamespace

    from bot.llm.slots import SlotCache

    config = SimpleNamespace(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, hidden_size=8)
    slots = SlotCache(config, slots=3, max_tokens=1000, device="cpu", dtype=torch.float32)
    a, b, c = slots.take(), slots.take(), slots.take()
    assert (a, b, c) == (0, 1, 2) and slots.take() is None
    for slot, length, fill in ((a, 3, 1.0), (b, 5, 2.0)):  # prefill: the new tokens' keys land in place
        positions, mask = slots.prefill_inputs([slot], [length])
        assert positions.tolist() == [list(range(length))] and mask.shape == (1, 1, length, length + 1)
        slots.update(torch.full((1, 1, length, 4), fill), torch.full((1, 1, length, 4), fill), 0)
    slots.start_decoding(a)
    slots.start_decoding(b)
    slots.give_back(c)  # left before decoding: nothing moves
    assert slots.top() == 2 and slots.lengths[:2] == [3, 5]
    positions, mask = slots.decode_inputs(slots.top(), slots.decode_columns())
    assert positions.flatten().tolist() == [3, 5]
    allowed = (mask[:, 0, 0] == 0).tolist()  # columns: scratch, then one per token, the new one included
    assert allowed == [[False, True, True, True, True, False, False], [False, True, True, True, True, True, True]]
    keys, _ = slots.update(torch.full((2, 1, 1, 4), 9.0), torch.full((2, 1, 1, 4), 9.0), 0)
    slots.advance()
    assert slots.lengths[:2] == [4, 6] and keys[0, 0, 4, 0] == 9.0 and keys[1, 0, 6, 0] == 9.0
    assert bool((keys[0, 0, 1:4] == 1.0).all()) and bool((keys[1, 0, 1:6] == 2.0).all())
    slots.give_back(a)  # a row leaves: the other keeps its slot and its keys where they are
    positions, mask = slots.decode_inputs(slots.top(), slots.decode_columns())
    assert (mask[0, 0, 0] == 0).tolist()[:2] == [True, False]  # a free slot in range attends its scratch only
    assert bool((slots.copy_out(b)[0][0][0, 0, :5] == 2.0).all())


# Streaming ---------------------------------------------------------------------------


async def test_streamed_deltas_add_up_to_the_reply(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    deltas = [delta async for delta in stream(engine, PROMPTS[3], GREEDY)]
    assert len(deltas) > 1
    assert "".join(deltas) == await generate(engine, PROMPTS[3], GREEDY)


def test_characters_split_across_tokens_are_never_emitted_half(tiny_backend):
    tokenizer = tiny_backend.tokenizer
    text = "Crème brûlée 🙂👍🏽 — 世界 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # some characters do span several tokens
    stream = IncrementalText(lambda token_ids: tokenizer.decode(token_ids))
    deltas = [stream.push(token) for token in ids] + [stream.finish()]
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == text


# Cancellation, limits, failures --------------------------------------------------------


async def test_a_cancelled_generation_frees_its_place(varied_backend, make_engine):
    engine = make_engine(varied_backend, max_batch=1)
    engine.held_channel = 7
    started = asyncio.Event()
    long_one = asyncio.create_task(first_delta_then_park(engine, PROMPTS[1], LONG, started, channel=7))
    await started.wait()
    long_one.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await long_one
    engine.release.set()
    # With one place only, this answer proves the cancelled row left the batch.
    assert await generate(engine, PROMPTS[0], GREEDY)
    await until(lambda: engine.load().active == 0)
    assert engine.counters.generated_tokens < 4 + 1 + GREEDY.max_new_tokens  # it stopped at its next step
    assert 7 in engine.prefix_cache.keys()  # what it had computed is kept for the channel's next turn


async def test_closing_a_stream_early_frees_its_place(varied_backend, make_engine):
    engine = make_engine(varied_backend, max_batch=1)
    async with contextlib.aclosing(stream(engine, PROMPTS[1], LONG)) as deltas:
        async for _ in deltas:
            break
    assert await generate(engine, PROMPTS[0], GREEDY)


async def test_a_full_queue_says_how_many_are_waiting(varied_backend, make_engine):
    engine = make_engine(varied_backend, max_batch=1, max_waiting=2)
    engine.held_channel = 5
    started = asyncio.Event()
    running = asyncio.create_task(first_delta_then_park(engine, PROMPTS[1], LONG, started, channel=5))
    await started.wait()
    queued = [asyncio.create_task(generate(engine, PROMPTS[0], GREEDY)) for _ in range(2)]
    await until(lambda: engine.load().waiting == 2)
    with pytest.raises(ModelBusy) as busy:
        await generate(engine, PROMPTS[0], GREEDY)
    assert busy.value.waiting == 2 and "2 replies are already waiting" in str(busy.value)
    running.cancel()
    engine.release.set()
    assert all(await asyncio.gather(*queued))  # the waiting ones are answered once the place is free


async def test_a_generation_past_its_time_limit_is_stopped_and_the_engine_goes_on(varied_backend, make_engine):
    engine = make_engine(varied_backend, timeout_s=0)  # past its limit whatever this machine's speed
    with pytest.raises(GenerationTimeout):
        await generate(engine, PROMPTS[1], LONG)
    await until(lambda: engine.load().active == 0)
    engine.timeout_s = 60
    assert await generate(engine, PROMPTS[0], GREEDY) == await generate(engine, PROMPTS[0], GREEDY)


async def test_a_failure_in_one_request_leaves_the_others_unharmed(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    expected = await generate(engine, PROMPTS[1], GREEDY)
    engine.failing_channel = 13
    failing = generate(engine, PROMPTS[0], GREEDY, channel=13)
    healthy = generate(engine, PROMPTS[1], GREEDY, channel=14)
    failed, answer = await asyncio.gather(failing, healthy, return_exceptions=True)
    assert isinstance(failed, GenerationFailed) and "RuntimeError" in str(failed)
    assert answer == expected
    assert 13 not in engine.prefix_cache.keys()  # nothing half-made is kept
    engine.failing_channel = None
    assert await generate(engine, PROMPTS[0], GREEDY, channel=13)  # the channel works again


async def test_closing_the_engine_stops_running_generations(varied_backend, make_engine):
    engine = make_engine(varied_backend)
    started = asyncio.Event()
    running = asyncio.create_task(first_delta_then_park(engine, PROMPTS[1], LONG, started))
    await started.wait()
    await asyncio.to_thread(engine.close)
    with pytest.raises(GenerationFailed, match="shutting down"):
        await running
    with pytest.raises(GenerationFailed, match="shutting down"):
        await generate(engine, PROMPTS[0], GREEDY)


# Through the service: what a user is told ----------------------------------------------


def service_over(engine, store, tmp_path, max_new_tokens):
    from bot.service import ChatService
    from tests.support.settings import settings_for

    return ChatService(store, engine, settings_for(tmp_path / "bot.db", do_sample=False,
                                                   max_new_tokens=max_new_tokens, repetition_penalty=1.0))


def hello_in(channel):
    from bot.core.types import IncomingMessage

    return IncomingMessage(channel_id=channel, guild_id=1, author_id=2, author_name="Ann", content="hello")


async def start_writing_in_channel_1(service):
    """Channel 1 starts an answer and holds the (only) place in the batch (the engine is held at
    its fourth token until `engine.release` is set); returns its task."""
    service.model.held_channel = 1
    writing = asyncio.Event()

    async def progress(_text):
        writing.set()

    task = asyncio.create_task(service.reply(hello_in(1), on_progress=progress))
    await writing.wait()
    return task


async def test_a_user_past_the_queue_bound_is_told_the_bot_is_busy_and_others_are_answered(
        varied_backend, make_engine, store, tmp_path):
    from bot import messages

    engine = make_engine(varied_backend, max_batch=1, max_waiting=1)
    service = service_over(engine, store, tmp_path, max_new_tokens=300)
    first = await start_writing_in_channel_1(service)
    second = asyncio.create_task(service.reply(hello_in(2)))
    await until(lambda: service.load().waiting == 1)  # channel 2 waits in line for the model
    third = await service.reply(hello_in(3))
    assert not third.ok and third.text == messages.BUSY.format(waiting=1)
    assert await count_turns(store, 3) == 0  # asked to send it again: not kept, or it would be there twice
    engine.release.set()
    assert (await first).ok and (await second).ok  # nobody else was dropped


async def test_a_user_who_has_to_wait_is_told_their_place_in_line(varied_backend, make_engine, store, tmp_path):
    from bot import messages

    engine = make_engine(varied_backend, max_batch=1, max_waiting=5)
    service = service_over(engine, store, tmp_path, max_new_tokens=200)
    first = await start_writing_in_channel_1(service)
    seen_by_second: list[str] = []

    async def second_progress(text):
        seen_by_second.append(text)

    second = asyncio.create_task(service.reply(hello_in(2), on_progress=second_progress))
    await until(lambda: seen_by_second)
    engine.release.set()
    second = await second
    assert (await first).ok and second.ok
    assert seen_by_second[0] == messages.QUEUED.format(place=1)
    assert seen_by_second[-1] == second.text  # then the answer replaced the notice


# Recorded decode steps (CUDA graphs' buckets and fixed buffers, checked on the CPU) -----------


def graphs_engine(make_engine, backend, recorder=None, **options) -> BatchingEngine:
    from bot.llm.decode_graphs import DecodeGraphs

    return make_engine(backend, graphs=DecodeGraphs(recorder) if recorder else graphs_on_the_cpu(), **options)


def test_decode_steps_are_rounded_up_to_a_few_shapes():
    from bot.llm.decode_graphs import DecodeGraphs

    assert [DecodeGraphs.rows_for(rows, 48) for rows in (1, 2, 3, 5, 17, 33, 48)] == [1, 2, 4, 8, 32, 48, 48]
    assert [DecodeGraphs.columns_for(columns, 4096) for columns in (2, 256, 257, 3000)] == [256, 256, 512, 4096]
    assert DecodeGraphs.columns_for(300, 257) == 257  # never past what the slots hold


async def test_recorded_decode_steps_answer_as_model_generate_alone(varied_backend, make_engine):
    """Five slots, eight replies of different lengths started one after another: steps run in
    buckets wider than their rows (idle slots write their scratch column) and their key/value
    columns (masked), and one reply grows the slots past 256 columns, so every graph is dropped
    and recorded again. Every answer is still transformers' own generate() for that prompt alone."""
    engine = graphs_engine(make_engine, varied_backend, max_batch=5)
    await until(lambda: engine.graphs.shapes == [(1, 256, None), (2, 256, None), (4, 256, None), (5, 256, None)])
    cases = [(PROMPTS[i % 4], dataclasses.replace(GREEDY if i % 2 else PENALISED, max_new_tokens=4 + 3 * i))
             for i in range(7)] + [(PROMPTS[1], dataclasses.replace(GREEDY, max_new_tokens=300))]
    assert await answers_started_one_after_another(engine, cases) == await generated_alone(varied_backend, cases)
    graphs = engine.graphs
    assert graphs.enabled and graphs.replays + graphs.eager_steps == engine.counters.decode_steps
    assert graphs.replays > graphs.eager_steps  # only a graph's first two steps run eagerly
    assert engine.counters.largest_batch >= 3
    assert {columns for _, columns, _ in engine.graphs.shapes} == {512}  # the slots grew: older graphs dropped


@pytest.mark.parametrize("fault", ["recording fails", "replay differs", "replay keeps the recorded step",
                                   "replay writes a column early"])
async def test_a_graph_that_fails_its_check_turns_graphs_off_and_answers_stay_right(
        fault, varied_backend, make_engine, caplog):
    class FaultyRecorder:
        def record(self, forward):
            if fault == "recording fails":
                raise RuntimeError("operation not permitted when stream is capturing")
            if fault == "replay differs":
                return lambda: forward() * 2
            if fault == "replay writes a column early":
                return column_early(forward)
            recorded = forward().clone()  # as a graph that read a host value once would be
            return lambda: recorded

    def column_early(forward):
        """As a graph that baked a length would: each decoding row's new keys/values overwrite
        its previous token's, so its slot is wrong from then on unless written again."""
        slots = forward.func.__self__.slots  # the runner whose decode step this is

        def replay():
            slots.length_tensor -= slots.decoding.long()
            try:
                return forward()
            finally:
                slots.length_tensor += slots.decoding.long()
        return replay

    expected = [await generate(make_engine(varied_backend), p, PENALISED) for p in PROMPTS]
    engine = graphs_engine(make_engine, varied_backend, recorder=FaultyRecorder())
    assert list(await asyncio.gather(*(generate(engine, p, PENALISED) for p in PROMPTS))) == expected
    assert not engine.graphs.enabled and engine.graphs.shapes == []
    warning = next(r.getMessage() for r in caplog.records if "Decode graphs are off" in r.getMessage())
    assert ("operation not permitted" if fault == "recording fails" else "did not match") in warning
    rewrote = [r.getMessage() for r in caplog.records if "Rewrote the key/value slots" in r.getMessage()]
    assert len(rewrote) == (0 if fault == "recording fails" else 1)


async def test_recorded_steps_answer_alike_on_the_real_model_and_with_eager_attention(
        embedded_worker, tiny_smollm3_dir, make_engine):
    """The embedded model (Llama's architecture) and eager attention (what a GPU runs) record
    without host traffic too, and answer a batch as the eager engine does."""
    greedy = GenerationSettings(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)
    eager_tiny = load_tiny(tiny_smollm3_dir, weight_scale=10.0)
    for backend, attention in ((embedded_worker.backend, "auto"), (eager_tiny, "eager")):
        plain = make_engine(backend, attention=attention)
        expected = [await generate(plain, p, greedy) for p in PROMPTS]
        recorded = graphs_engine(make_engine, backend, attention=attention)
        assert list(await asyncio.gather(*(generate(recorded, p, greedy) for p in PROMPTS))) == expected
        graphs = recorded.graphs
        assert graphs.enabled and graphs.replays > 0
        assert graphs.replays + graphs.eager_steps == recorded.counters.decode_steps


# Slots sized by a memory budget ---------------------------------------------------------------


async def test_a_slot_memory_budget_sets_the_context_and_long_conversations_are_cut_to_fit(
        varied_backend, make_engine, store, tmp_path):
    """Slots sized by [engine] slot_memory_mb (on a GPU: from its free memory) are allocated at
    start and never grow; their length is the context the service cuts prompts to, so a long
    conversation drops its oldest turns and is answered, instead of outgrowing the memory."""
    from bot.llm.slots import column_bytes

    model = varied_backend.model
    engine = graphs_engine(make_engine, varied_backend, max_batch=2,
                           slot_memory_bytes=2 * 601 * column_bytes(model.config, model.dtype))
    assert engine.context_tokens == 600
    service = service_over(engine, store, tmp_path, max_new_tokens=40)
    words = " ".join(f"word{i}" for i in range(60))
    dropped = []
    for turn in range(12):  # each turn well over 60 tokens: together far past 600
        reply = await service.reply(dataclasses.replace(hello_in(1), content=f"Turn {turn}: {words}"))
        assert reply.ok, reply.text
        dropped.append(reply.dropped_turns)
    assert any(dropped)  # older turns were cut (a few at a time, so that the next prompts reuse the cache)
    graphs = engine.graphs  # the slots never grew: no graph was dropped for a new allocation
    assert graphs.enabled and graphs.recorded == len(graphs.shapes) and (1, 601, None) in graphs.shapes
    with pytest.raises(GenerationFailed, match="context of 600 tokens"):  # one prompt alone past the slots
        await generate(engine, chat(" ".join([words] * 6)), GREEDY)


def test_slots_that_cannot_hold_a_conversation_end_start_up_with_a_sentence(varied_backend):
    from bot.llm.model_source import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"too few to chat.*Lower \[engine\] max_batch or raise "
                                             r"\[engine\] slot_memory_mb"):
        BatchingEngine(varied_backend, max_batch=8, slot_memory_bytes=1 << 20)


def test_a_model_spread_over_devices_ends_start_up_with_what_to_set(varied_backend, monkeypatch):
    """device_map "auto" on a machine with two GPUs spreads the layers over both: the engine,
    whose slots live on one device, says so at start rather than failing the first reply."""
    from bot.llm.model_source import ModelLoadError

    spread = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    monkeypatch.setattr(varied_backend.model, "hf_device_map", spread, raising=False)
    with pytest.raises(ModelLoadError, match=r'spread over 0, 1 .*set \[model\] device_map = "cuda:0"'):
        BatchingEngine(varied_backend, max_batch=2)


# Prefill ---------------------------------------------------------------------------------------


async def test_prompts_waiting_together_are_prefilled_in_one_forward_and_answer_as_alone(
        varied_backend, make_engine):
    """Requests admitted in one round share prefill forwards, left-padded to the longest: two new
    prompts in one, then two channels' next turns in another (each started from its channel's
    cached turn, at its own place in its slot). Each answer is still transformers' own
    generate() for that prompt alone."""
    engine = make_engine(varied_backend, max_batch=6)
    earlier = [chat("Tell me about one."), chat("Tell me about the number one in a long sentence with many words.")]
    answers = [await generate(engine, prompt, GREEDY, channel=n) for n, prompt in enumerate(earlier)]
    cases = [(chat(f"Tell me about the number {word} in a short sentence, please."), GREEDY) for word in ("two", "six")]
    cases += [(chat(prompt[1]["content"], answer, "And two?"), GREEDY) for prompt, answer in zip(earlier, answers)]
    engine.held_channel = 99  # the engine thread waits while the requests queue: one round admits them all
    started = asyncio.Event()
    holder = asyncio.create_task(first_delta_then_park(engine, PROMPTS[1], LONG, started, channel=99))
    await asyncio.to_thread(engine.holding.wait, 60)
    forwards, reused = engine.counters.prefill_forwards, engine.counters.reused_tokens
    tasks = [asyncio.create_task(generate(engine, prompt, params, channel=None if i < 2 else i - 2))
             for i, (prompt, params) in enumerate(cases)]
    await until(lambda: engine.load().waiting == len(cases))
    engine.release.set()
    together = await asyncio.gather(*tasks)
    holder.cancel()
    assert together == await generated_alone(varied_backend, cases)
    assert engine.counters.reused_tokens > reused  # the next turns started from their channels' caches
    assert engine.counters.prefill_forwards - forwards == 2
