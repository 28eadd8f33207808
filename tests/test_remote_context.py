"""The remote backend takes its context length from the model server itself.

`transformers serve` (the real server test_openai_backend.py runs) reports no context length,
and vLLM, SGLang and llama.cpp server cannot run on these machines. So a tiny aiohttp server on
127.0.0.1 answers with the JSON their own code and documentation give: vLLM's and SGLang's
/v1/models ModelCard (`max_model_len`), and llama.cpp server's /v1/models (`meta.n_ctx_train`,
the training length) with its /props (`default_generation_settings.n_ctx`, what each request
really gets). The bot's side is real: settings, load_model, the HTTP requests, /status.
"""

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
from aiohttp import web

from bot.llm import remote_setup
from bot.llm.loading import load_model
from bot.llm.model_source import ModelLoadError
from bot.llm.remote_setup import FALLBACK_CONTEXT_TOKENS
from bot.llm.server_kind import ServerKind
from bot.service import ChatService
from tests.support.openai_server import stub_server
from tests.support.ports import free_port
from tests.support.settings import settings_for

NAME = "example-org/served-model"  # not in any local cache: only the server can tell its length

VLLM_MODELS = {"object": "list", "data": [
    {"id": NAME, "object": "model", "created": 1735142223, "owned_by": "vllm", "root": NAME, "parent": None,
     "max_model_len": 32768, "permission": [{"id": "modelperm-1", "object": "model_permission"}]},
    {"id": "pirate-lora", "object": "model", "created": 1735142223, "owned_by": "vllm", "root": "/adapters/pirate",
     "parent": NAME, "max_model_len": 32768, "permission": []}]}
LLAMA_CPP_MODELS = {"object": "list", "data": [
    {"id": "../models/served-model-Q4_K_M.gguf", "object": "model", "created": 1735142223, "owned_by": "llamacpp",
     "meta": {"vocab_type": 2, "n_vocab": 128256, "n_ctx_train": 131072, "n_embd": 4096, "n_params": 8030261312,
              "size": 4912898304}}]}
LLAMA_CPP_PROPS = {"default_generation_settings": {"id": 0, "n_ctx": 8192, "is_processing": False}, "total_slots": 4}
TRANSFORMERS_SERVE_MODELS = {"object": "list", "data": [
    {"id": NAME, "object": "model", "created": 0, "owned_by": "example-org"}]}


@asynccontextmanager
async def model_server(routes: dict[str, object], seen_headers: list | None = None) -> AsyncIterator[str]:
    """Serve `routes` (path -> JSON) on 127.0.0.1; yields the API root, http://127.0.0.1:PORT/v1."""
    async def answer(request: web.Request) -> web.Response:
        if seen_headers is not None:
            seen_headers.append(dict(request.headers))
        return web.json_response(routes[request.path])

    app = web.Application()
    for path in routes:
        app.router.add_get(path, answer)
    async with stub_server(app) as base_url:
        yield base_url


async def remote_model(tmp_path, base_url: str, **model):
    settings = settings_for(tmp_path / "bot.db").with_overrides(
        "model", backend="openai", base_url=base_url, name=NAME, **model)
    return await asyncio.to_thread(load_model, settings)  # as open_app loads it: off the event loop


async def test_vllm_and_sglang_report_max_model_len(tmp_path, store, settings, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    headers: list = []
    async with model_server({"/v1/models": VLLM_MODELS}, headers) as base_url:
        model = await remote_model(tmp_path, base_url)
    assert model.context_tokens == 32768
    assert headers[0]["Authorization"] == "Bearer sk-test"
    assert model.server is ServerKind.VLLM  # its models say owned_by vllm
    assert "(32,768 tokens of context, as the server reports)" in await ChatService(store, model, settings).status()


async def test_llama_cpp_reports_what_each_request_gets_not_the_training_length(tmp_path):
    async with model_server({"/v1/models": LLAMA_CPP_MODELS, "/props": LLAMA_CPP_PROPS}) as base_url:
        model = await remote_model(tmp_path, base_url)
    assert model.context_tokens == 8192
    assert model.server is ServerKind.LLAMA_CPP
    assert "repeat_penalty" in model.request_body([{"role": "user", "content": "hi"}], settings_for(tmp_path / "x.db").generation)


async def test_the_setting_wins_over_the_server(tmp_path):
    async with model_server({"/v1/models": VLLM_MODELS}) as base_url:
        model = await remote_model(tmp_path, base_url, context_tokens=2048)
    assert model.context_tokens == 2048


async def test_a_server_that_says_nothing_or_cannot_be_reached_gets_the_fallback_and_status_says_so(
        tmp_path, store, settings):
    async with model_server({"/v1/models": TRANSFORMERS_SERVE_MODELS}) as base_url:
        silent = await remote_model(tmp_path, base_url)
    unreachable = await remote_model(tmp_path, f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    assert silent.context_tokens == unreachable.context_tokens == FALLBACK_CONTEXT_TOKENS
    status = await ChatService(store, silent, settings).status()
    assert "(4,096 tokens of context, a guess: the server does not say; set [model] context_tokens)" in status


async def test_a_server_still_loading_its_model_is_waited_for_then_read_right(tmp_path, monkeypatch, caplog):
    """llama-server and Ollama answer 503 to everything while they load: read then, the server
    would pass for an unknown one with a guessed context for the bot's whole life."""
    monkeypatch.setattr(remote_setup, "LOADING_POLL_S", 0.01)
    asked = []

    async def models(request: web.Request) -> web.Response:
        asked.append(request.path)
        if len(asked) <= 3:
            return web.json_response({"error": {"message": "Loading model", "code": 503}}, status=503)
        return web.json_response(VLLM_MODELS)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with stub_server(app) as base_url:
        with caplog.at_level(logging.INFO, logger="bot.llm.remote_setup"):
            model = await remote_model(tmp_path, base_url)
    assert model.server is ServerKind.VLLM and model.context_tokens == 32768
    assert any("still loading its model" in r.getMessage() for r in caplog.records)


async def test_a_refused_api_key_stops_the_start_with_a_sentence(tmp_path):
    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", refuse)
    async with stub_server(app) as base_url:
        with pytest.raises(ModelLoadError, match=r"refused the API key \(HTTP 401\): set OPENAI_API_KEY"):
            await remote_model(tmp_path, base_url)


OLLAMA_MODELS = {"object": "list", "data": [
    {"id": "qwen3:4b", "object": "model", "created": 1735142223, "owned_by": "library"}]}


async def test_ollama_is_recognised_and_what_it_cannot_take_is_said_at_start(tmp_path, caplog):
    """Ollama's /v1 reads no repetition penalty and no chat_template_kwargs (it ignores them
    without a word), and cuts a prompt past its num_ctx silently: all said at start."""
    routes = {"/v1/models": OLLAMA_MODELS, "/api/version": {"version": "0.6.2"}}
    async with model_server(routes) as base_url:
        with caplog.at_level(logging.WARNING, logger="bot.llm.remote_setup"):
            model = await remote_model(tmp_path, base_url, thinking=True)
    assert model.server is ServerKind.OLLAMA
    body = model.request_body([{"role": "user", "content": "hi"}], settings_for(tmp_path / "x.db").generation)
    assert not {"repetition_penalty", "repeat_penalty", "chat_template_kwargs"} & set(body)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "takes no repetition penalty" in said and "cannot be told to think" in said
    assert "Ollama cuts a prompt longer than the context" in said


def ollama_app(shown_parameters: str, running_context: int, loads: list) -> web.Application:
    """Ollama's own API beside its /v1, as its documentation gives it: /api/show's `parameters`
    (the Modelfile's, one "name value" a line), /api/ps listing the loaded models with the context
    each runs with, and /api/generate with no prompt loading a model."""
    loaded: list[dict] = []

    async def show(request: web.Request) -> web.Response:
        assert (await request.json())["model"] == "qwen3:4b"
        return web.json_response({"parameters": shown_parameters, "template": "{{ .Prompt }}",
                                  "details": {"family": "qwen3"}})

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        loads.append(body)
        loaded.append({"name": body["model"], "model": body["model"], "size": 3_340_000_000,
                       "context_length": running_context, "expires_at": "2026-12-01T09:00:00Z"})
        return web.json_response({"model": body["model"], "response": "", "done": True, "done_reason": "load"})

    async def running(_request: web.Request) -> web.Response:
        return web.json_response({"models": loaded})

    async def models(_request: web.Request) -> web.Response:
        return web.json_response(OLLAMA_MODELS)

    async def version(_request: web.Request) -> web.Response:
        return web.json_response({"version": "0.13.0"})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/generate", generate)
    app.router.add_get("/api/ps", running)
    return app


async def ollama_model(tmp_path, app: web.Application, caplog, **model):
    async with stub_server(app) as base_url:
        with caplog.at_level(logging.INFO, logger="bot.llm"):
            settings = settings_for(tmp_path / "bot.db").with_overrides(
                "model", backend="openai", base_url=base_url, name="qwen3:4b", **model)
            return await asyncio.to_thread(load_model, settings)


# /api/show's parameters as Ollama writes them: each name padded to a column.
SHOWN_PARAMETERS = 'num_ctx                        8192\nstop                           "<|im_end|>"\ntemperature                    0.6'


async def test_ollama_context_set_in_the_modelfile_is_read_from_api_show(tmp_path, caplog):
    loads: list = []
    model = await ollama_model(tmp_path, ollama_app(SHOWN_PARAMETERS, 4096, loads),
                               caplog)
    assert model.context_tokens == 8192 and model.abilities.context_source == "as the server reports"
    assert loads == []  # nothing loaded just to ask
    assert "cuts a prompt longer" not in caplog.text


async def test_ollama_default_context_is_read_from_the_loaded_model(tmp_path, caplog):
    """Without num_ctx in the Modelfile, each request gets the server's default (its
    OLLAMA_CONTEXT_LENGTH or one chosen by GPU memory), which only /api/ps says, of a model
    loaded: the bot loads it at start, as the first reply would have."""
    loads: list = []
    model = await ollama_model(tmp_path, ollama_app("stop \"<|im_end|>\"", 32768, loads), caplog)
    assert model.context_tokens == 32768
    assert [load["model"] for load in loads] == ["qwen3:4b"] and "prompt" not in loads[0]
    assert "Ollama is loading qwen3:4b" in caplog.text and "cuts a prompt longer" not in caplog.text


async def test_a_context_setting_above_what_ollama_runs_is_warned_of(tmp_path, caplog):
    model = await ollama_model(tmp_path, ollama_app("num_ctx 4096", 4096, []), caplog, context_tokens=16384)
    assert model.context_tokens == 16384  # the operator's word stands, with the warning
    assert "context_tokens = 16384 is more than the 4096 tokens Ollama runs qwen3:4b with" in caplog.text
