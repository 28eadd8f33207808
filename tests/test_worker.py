"""The model worker: off the event loop, time limits, failures, and a worker that keeps working."""

import asyncio
import threading

import pytest

from bot.config import GenerationSettings
from bot.llm.port import GenerationFailed, GenerationTimeout, ModelBusy
from bot.llm.worker import ModelWorker
from tests.support.scripted import ScriptedBackend
from tests.support.models import generate

PROMPT = [{"role": "user", "content": "hello"}]


async def test_the_event_loop_keeps_running_while_the_model_works():
    """The model answers only once the event loop has ticked ten times while it waits: a
    generation that blocked the loop would never be let through (and fail at the gate's limit)."""
    ticked = threading.Event()
    worker = ModelWorker(ScriptedBackend(gate=ticked), timeout_s=60)

    async def heartbeat():
        for _ in range(10):
            await asyncio.sleep(0.01)
        ticked.set()

    beating = asyncio.create_task(heartbeat())
    reply = await generate(worker, PROMPT, GenerationSettings())
    assert reply == "echo: hello" and beating.done()
    worker.close()


async def test_a_generation_past_its_time_limit_is_stopped_and_the_worker_goes_on():
    backend = ScriptedBackend(delay_s=30)
    worker = ModelWorker(backend, timeout_s=0.2)
    with pytest.raises(GenerationTimeout, match="longer than 0 seconds|longer than"):
        await generate(worker, PROMPT, GenerationSettings())
    await asyncio.to_thread(backend.stopped_early.wait, 5)
    assert backend.stopped_early.is_set()  # the thread was told to stop, not left running
    backend.delay_s = 0
    assert await generate(worker, PROMPT, GenerationSettings()) == "echo: hello"
    worker.close()


async def test_a_model_that_raises_gives_a_clear_error_and_the_worker_goes_on():
    backend = ScriptedBackend(reply=RuntimeError("CUDA out of memory"))
    worker = ModelWorker(backend, timeout_s=5)
    with pytest.raises(GenerationFailed, match="RuntimeError"):
        await generate(worker, PROMPT, GenerationSettings())
    backend.reply = lambda messages: "fine again"
    assert await generate(worker, PROMPT, GenerationSettings()) == "fine again"
    worker.close()


async def test_the_real_model_generates_and_its_time_limit_stops_it(embedded_worker):
    greedy = GenerationSettings(do_sample=False, max_new_tokens=8)
    first = await generate(embedded_worker, PROMPT, greedy)
    assert first.strip() and first == await generate(embedded_worker, PROMPT, greedy)
    embedded_worker.timeout_s = 0.05
    try:
        with pytest.raises(GenerationTimeout):
            await generate(embedded_worker, PROMPT, GenerationSettings(max_new_tokens=2000))
    finally:
        embedded_worker.timeout_s = 120
    assert await generate(embedded_worker, PROMPT, greedy) == first


def test_auto_dtype_is_bfloat16_only_where_the_cpu_runs_it_natively(tmp_path):
    import torch

    from bot.llm.transformers_backend import cpu_has_native_bf16, resolve_dtype

    with_bf16 = tmp_path / "cpuinfo-bf16"
    with_bf16.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    without = tmp_path / "cpuinfo-plain"
    without.write_text("flags\t\t: fpu sse2 avx2\n")
    assert cpu_has_native_bf16(str(with_bf16)) and not cpu_has_native_bf16(str(without))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    assert resolve_dtype("float16") == torch.float16
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


async def test_past_max_waiting_a_reply_is_refused_at_once_and_the_rest_are_written():
    worker = ModelWorker(ScriptedBackend(delay_s=0.05), timeout_s=5, max_waiting=2)
    results = await asyncio.gather(*(generate(worker, PROMPT, GenerationSettings()) for _ in range(5)),
                                   return_exceptions=True)
    busy = [r for r in results if isinstance(r, ModelBusy)]
    assert results[:3] == ["echo: hello"] * 3  # one written, two waiting
    assert len(busy) == 2 and all(b.waiting == 2 for b in busy)
    assert await generate(worker, PROMPT, GenerationSettings()) == "echo: hello"  # room again once done
    worker.close()
