"""The remote backend against a real OpenAI-compatible server on loopback (`transformers serve`
with the embedded SmolLM2-135M), not a mock: streaming, memory through the chat flow, stopping,
time limits, and the sentences users get when the server cannot answer."""

import asyncio
import contextlib
import logging

import pytest

from bot.config import ConfigError, GenerationSettings, load_settings
from bot.core.types import IncomingMessage
from bot.llm import embedded
from bot.llm.loading import load_model
from bot.llm.openai_backend import OpenAICompatibleModel
from bot.llm.remote_counting import RemoteTokenCounter
from bot.llm.remote_setup import api_key_from_environment
from bot.llm.server_kind import ServerKind
from bot.llm.port import GenerationFailed, GenerationTimeout
from bot.service import ChatService
from tests.support.openai_server import stub_server, transformers_server
from tests.support.ports import free_port
from tests.support.settings import settings_for
from tests.support.models import generate, stream

GREEDY = GenerationSettings(max_new_tokens=16, do_sample=False)
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="session")
def model_dir():
    return embedded.converted_model_dir()


@pytest.fixture(scope="session")
def server_url(model_dir, tmp_path_factory):
    with transformers_server(model_dir, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


class RecordingModel(OpenAICompatibleModel):
    """The real backend, keeping each request body it sends so tests can check what the server got,
    and counting the responses being read (0 once every connection's response is closed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[dict] = []
        self.open_streams = 0

    def request_body(self, messages, params, thinking=None):
        body = super().request_body(messages, params, thinking)
        self.sent.append(body)
        return body

    @contextlib.asynccontextmanager
    async def _post(self, body, **options):
        async with super()._post(body, **options) as response:
            self.open_streams += 1
            try:
                yield response
            finally:
                self.open_streams -= 1


def remote_settings(tmp_path, model_dir, server_url, **model):
    settings = settings_for(tmp_path / "bot.db", do_sample=False, max_new_tokens=24)
    # transformers serve is pinned to the path (and found to be transformers serve: no penalty is sent).
    return settings.with_overrides("model", backend="openai", base_url=server_url, name=str(model_dir), **model)


@pytest.fixture
async def remote(tmp_path, model_dir, server_url):
    settings = remote_settings(tmp_path, model_dir, server_url)
    model = load_model(settings)
    assert isinstance(model, OpenAICompatibleModel)
    assert model.server is ServerKind.TRANSFORMERS  # asked of the server itself
    recording = RecordingModel(model.base_url, model.name, model.context_tokens, model.counter, timeout_s=120,
                               server=model.server)
    yield recording
    await recording.aclose()


async def test_a_reply_streams_in_pieces_that_add_up_to_the_whole_reply(remote):
    pieces = [piece async for piece in stream(remote, HELLO, GREEDY)]
    assert len(pieces) > 3
    assert "".join(pieces) == await generate(remote, HELLO, GREEDY)
    assert remote.sent[0]["stream"] is True and remote.sent[0]["max_tokens"] == 16
    assert remote.sent[0]["temperature"] == 0.0  # greedy


async def test_the_bot_remembers_the_first_turn_through_the_server(tmp_path, store, model_dir, server_url, remote):
    service = ChatService(store, remote, remote_settings(tmp_path, model_dir, server_url))
    said = lambda text: IncomingMessage(channel_id=1, guild_id=2, author_id=3, author_name="Ann", content=text)
    first = await service.reply(said("My favourite fruit is mango."))
    second = await service.reply(said("What is my favourite fruit?"))
    assert first.ok and second.ok
    second_prompt = remote.sent[-1]["messages"]
    assert [m["role"] for m in second_prompt] == ["system", "user", "assistant", "user"]
    assert "mango" in second_prompt[1]["content"]
    assert second_prompt[2]["content"] == first.text


async def test_stopping_early_closes_the_connection_and_the_server_keeps_answering(remote):
    pieces = stream(remote, HELLO, GenerationSettings(max_new_tokens=200, do_sample=False))
    async for _piece in pieces:
        assert remote.open_streams == 1
        break
    await pieces.aclose()
    assert remote.open_streams == 0
    assert await generate(remote, HELLO, GREEDY)


async def test_a_cancelled_reply_closes_its_connection(remote):
    started = asyncio.Event()

    async def listen():
        async for _piece in stream(remote, HELLO, GenerationSettings(max_new_tokens=200, do_sample=False)):
            started.set()

    task = asyncio.create_task(listen())
    await asyncio.wait_for(started.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert remote.open_streams == 0


async def test_a_reply_past_its_time_limit_times_out_and_the_backend_keeps_working(remote):
    remote.timeout_s = 0.2
    with pytest.raises(GenerationTimeout, match="longer than"):
        await generate(remote, HELLO, GenerationSettings(max_new_tokens=2000, do_sample=False))
    assert remote.open_streams == 0
    remote.timeout_s = 120
    assert await generate(remote, HELLO, GREEDY)


async def test_an_unreachable_server_is_named_in_a_sentence(remote):
    closed = OpenAICompatibleModel(f"http://127.0.0.1:{free_port()}/v1", "m", 2048, remote.counter, timeout_s=5)
    with pytest.raises(GenerationFailed, match=r"could not be reached\.$"):
        await generate(closed, HELLO, GREEDY)
    await closed.aclose()


async def test_the_servers_own_error_message_goes_to_the_log(remote, caplog):
    """The operator reads what the server said; the channel, which is public, reads the status."""
    wrong = OpenAICompatibleModel(remote.base_url, "no-such/model", 2048, remote.counter, timeout_s=5,
                                  server=ServerKind.TRANSFORMERS)
    with caplog.at_level(logging.WARNING, logger="bot.llm.openai_backend"):
        with pytest.raises(GenerationFailed, match=r"^The model server refused the request \(HTTP 4\d\d\)\.$"):
            await generate(wrong, HELLO, GREEDY)
    await wrong.aclose()
    assert "pinned" in caplog.text


async def test_the_thinking_switch_and_repetition_penalty_are_sent(remote):
    remote.thinking = True
    assert await generate(remote, HELLO, GREEDY)  # the server accepts the template switch
    assert remote.sent[-1]["chat_template_kwargs"] == {"enable_thinking": True}
    penalised = OpenAICompatibleModel(remote.base_url, "m", 2048, remote.counter)
    body = penalised.request_body(HELLO, GenerationSettings(repetition_penalty=1.3))
    assert body["repetition_penalty"] == 1.3 and "frequency_penalty" not in body


async def test_the_prompt_is_counted_with_the_local_tokenizer(tmp_path, model_dir, remote):
    from bot.llm.transformers_backend import load_transformers_backend
    local = load_transformers_backend(load_settings(environ={"BOT_MODEL_NAME": str(model_dir)}).model)
    assert remote.render(HELLO).tokens == local.render(HELLO).tokens
    assert remote.context_tokens == local.context_tokens


def test_without_a_local_tokenizer_the_budget_is_estimated_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = settings_for(tmp_path / "bot.db").with_overrides(
        "model", backend="openai", base_url="http://127.0.0.1:9/v1", name="nobody/not-downloaded")
    with caplog.at_level(logging.WARNING):
        model = load_model(settings)
    warnings = [r.message for r in caplog.records if "approximate" in r.message]
    assert len(warnings) == 1
    assert model.render([{"role": "user", "content": "x" * 300}]).tokens >= 100
    assert model.context_tokens == 4096


def test_the_api_key_comes_from_the_environment_only(tmp_path):
    assert api_key_from_environment({"OPENAI_API_KEY": " sk-1 "}) == "sk-1"
    assert api_key_from_environment({"BOT_MODEL_API_KEY": "b", "OPENAI_API_KEY": "o"}) == "b"
    path = tmp_path / "config.toml"
    path.write_text('[model]\napi_key = "sk-1"\n')
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        load_settings(path, environ={})


@pytest.mark.parametrize("status, body, expected, logged", [
    (429, '{"error": {"message": "slow down"}}', r"busy right now \(too many requests\)", "slow down"),
    (500, '{"error": {"message": "CUDA out of memory"}}', r"failed \(HTTP 500\)\.$", "CUDA out of memory"),
    (400, '{"detail": "bad field"}', r"refused the request \(HTTP 400\)\.$", "bad field"),
    # FastAPI's validation errors (transformers serve) echo the offending input: only where and what.
    (422, '{"detail": [{"loc": ["body", "top_k"], "msg": "Extra inputs are not permitted", "input": "secret"}]}',
     r"refused the request \(HTTP 422\)\.$", "body.top_k: Extra inputs are not permitted"),
])
async def test_busy_and_failing_servers_become_one_sentence(status, body, expected, logged, caplog):
    # transformers serve never answers 429 or 500 on demand: a few lines of aiohttp on loopback do.
    from aiohttp import web

    async def refuse(_request):
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    async with stub_server(app) as base_url:
        model = OpenAICompatibleModel(base_url, "m", 2048, RemoteTokenCounter(thinking=False), timeout_s=5)
        try:
            with caplog.at_level(logging.WARNING, logger="bot.llm.openai_backend"), \
                    pytest.raises(GenerationFailed, match=expected):
                await generate(model, HELLO, GREEDY)
        finally:
            await model.aclose()
    assert logged in caplog.text and "secret" not in caplog.text  # what the server said, for the operator
