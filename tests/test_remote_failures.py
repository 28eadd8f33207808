"""How the remote backend holds up when a model server misbehaves: each failure ends in a
sentence for the user (or an answer marked cut short) and a channel that keeps working.

The real servers (tests/test_openai_backend.py, tests/test_llama_cpp.py) cannot be made to
drop a kept-alive connection, cut a stream or refuse a prompt on demand, so a few lines of
aiohttp on 127.0.0.1 play a server that does, speaking the same SSE protocol. The bot's side is
all real: the backend, the chat service, a SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from bot import messages
from bot.llm.loading import load_model
from bot.llm.openai_backend import OpenAICompatibleModel
from bot.llm.remote_counting import RemoteTokenCounter, estimate_text_tokens, estimate_tokens
from bot.llm.remote_setup import FALLBACK_CONTEXT_TOKENS
from bot.llm.server_kind import ServerKind
from bot.service import ChatService
from tests.support.conversation import said, stored
from tests.support.openai_server import stub_server
from tests.support.ports import free_port
from tests.support.settings import settings_for


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    data = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n".encode()


class PlayedServer:
    """A chat-completions endpoint whose every answer is decided by `play(request_number, body)`,
    which returns the SSE bytes to send and what to do after: "finish" (end the response),
    "drop" (cut the connection). It keeps every request body it got."""

    def __init__(self, play):
        self.play = play
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        outcome = self.play(len(self.bodies), body)
        if isinstance(outcome, web.Response):
            return outcome
        pieces, ending = outcome
        if ending == "drop before answering":
            request.transport.close()  # what a closed keep-alive connection looks like to the client
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        if ending == "drop":
            request.transport.close()  # the server died mid-answer
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app


def whole(words: str) -> tuple[list[bytes], str]:
    return [*(chunk(word + " ") for word in words.split()), chunk(finish="stop")], "finish"


async def service_on(base_url: str, store, settings, context_tokens: int = 4096,
                     server: ServerKind = ServerKind.OTHER) -> tuple[ChatService, OpenAICompatibleModel]:
    model = OpenAICompatibleModel(base_url, "m", context_tokens, RemoteTokenCounter(thinking=False), timeout_s=30,
                                  server=server)
    return ChatService(store, model, settings), model


async def replies_to(play, store, settings, *texts: str) -> tuple[list, PlayedServer]:
    """Each text asked in turn, in one channel, of a chat service on a PlayedServer playing `play`."""
    server = PlayedServer(play)
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)
        replies = [await service.reply(said(text)) for text in texts]
        await model.aclose()
    return replies, server


async def test_a_kept_alive_connection_the_server_closed_is_retried_once_on_a_fresh_one(store, settings):
    server = PlayedServer(lambda number, body: ([], "drop before answering") if number == 1 else whole("Hello there"))
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)
        reply = await service.reply(said("hi"))
        await model.aclose()
    assert reply.ok and reply.text == "Hello there" and not reply.notes
    assert len(server.bodies) == 2


async def test_a_server_that_never_answers_is_one_sentence_after_one_retry(store, settings):
    server = PlayedServer(lambda number, body: ([], "drop before answering"))
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)
        reply = await service.reply(said("hi"))
        await model.aclose()
    assert not reply.ok and "could not be reached" in reply.text
    assert len(server.bodies) == 2


async def test_a_server_that_dies_mid_answer_leaves_the_answer_cut_short_and_the_channel_working(store, settings):
    def play(number, body):
        if number == 1:
            return [chunk("Once "), chunk("upon "), chunk("a ")], "drop"
        return whole("Still here")

    (cut, after), _ = await replies_to(play, store, settings, "tell me a story", "are you there?")
    assert cut.ok and cut.text == "Once upon a" and messages.CUT_SHORT_SERVER in cut.notes
    assert after.ok and after.text == "Still here"
    assert await stored(store) == [("user", "tell me a story"), ("assistant", "Once upon a"),
                                   ("user", "are you there?"), ("assistant", "Still here")]
    assert [turn.cut_short for turn in await store.recent_turns(10, 10)] == [None, "interrupted", None, None]


async def test_a_stream_that_ends_without_a_finish_reason_is_cut_short(store, settings):
    # llama-cpp-python with interrupt_requests on ends one channel's stream when another asks.
    server = PlayedServer(lambda number, body: ([chunk("The "), chunk("dragon ")], "finish"))
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)
        reply = await service.reply(said("a story"))
        await model.aclose()
    assert reply.text == "The dragon" and messages.CUT_SHORT_SERVER in reply.notes


def refuse_past(limit_chars: int):
    """A server with a small context: llama-server's 400 for any prompt longer than `limit_chars`."""
    def play(number, body):
        if sum(len(m["content"]) for m in body["messages"]) > limit_chars:
            error = {"error": {"code": 400, "type": "exceed_context_size_error", "n_ctx": 512,
                               "message": "the request exceeds the available context size, try increasing it"}}
            return web.json_response(error, status=400)
        return whole("Short enough")
    return play


async def test_a_prompt_the_server_refuses_as_too_long_is_retried_with_older_turns_left_out(store, settings):
    server = PlayedServer(refuse_past(1200))
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)  # believes 4096 tokens: the server has 512
        for number in range(6):
            assert (await service.reply(said(f"message {number}: " + "words " * 40))).ok
        await model.aclose()
    assert model.context_tokens == 512  # learnt from the refusal
    assert "as the server said" in model.abilities.context_source
    refused = [body for body in server.bodies if sum(len(m["content"]) for m in body["messages"]) > 1200]
    assert len(refused) == 1  # once learnt, prompts are cut to fit before they are sent
    assert server.bodies[-1]["messages"][-1]["content"] == "Ann: message 5: " + "words " * 40


async def test_a_message_too_long_for_the_server_is_refused_in_a_sentence_and_does_not_poison_the_channel(
        store, settings):
    server = PlayedServer(refuse_past(1200))
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)
        assert (await service.reply(said("hello"))).ok
        refused = await service.reply(said("x" * 1500))
        after = await service.reply(said("and now?"))
        await model.aclose()
    assert not refused.ok and refused.text == messages.SERVER_PROMPT_TOO_LONG.format(context=512)
    assert after.ok and after.text == "Short enough"
    assert await stored(store) == [("user", "hello"), ("assistant", "Short enough"),
                                   ("user", "and now?"), ("assistant", "Short enough")]


async def test_an_empty_stream_is_taken_as_a_prompt_too_long_and_retried_shorter(store, settings):
    # llama-cpp-python answers a prompt past its context with an empty stream (no finish_reason).
    def play(number, body):
        if sum(len(m["content"]) for m in body["messages"]) > 1200:
            return [], "finish"
        return whole("Fits now")

    server = PlayedServer(play)
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings, server=ServerKind.LLAMA_CPP_PYTHON)
        for number in range(5):
            reply = await service.reply(said(f"message {number}: " + "words " * 40))
            assert reply.ok and reply.text == "Fits now"
        await model.aclose()


async def test_the_estimate_grows_to_the_count_the_server_reports(store, settings):
    # A server whose tokenizer makes three times the tokens the estimate expects says so in usage.
    def play(number, body):
        return [chunk("ok", finish="stop", usage={"prompt_tokens": 3 * estimate_tokens(body["messages"])})], "finish"

    server = PlayedServer(play)
    question = [{"role": "user", "content": "hello " * 100}]
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings, server=ServerKind.VLLM)
        before = model.render(question).tokens
        assert (await service.reply(said("hello " * 100))).ok
        after = model.render(question).tokens
        await model.aclose()
    assert server.bodies[0]["stream_options"] == {"include_usage": True}
    assert after >= 3 * before - 1


def test_the_estimate_never_undercounts_text_outside_ascii(embedded_backend):
    """2,754 Chinese characters were estimated at 926 tokens; SmolLM2's tokenizer makes about 5,000."""
    text = ("龙与骑士的故事在很久以前开始了。" * 200)[:2754]
    real = len(embedded_backend.tokenizer.encode(text, add_special_tokens=False))
    assert real > 4000 and estimate_text_tokens(text) >= real  # the old estimate: 2,754 // 3 = 918
    english = "The dragon and the knight met at dawn by the river. " * 40
    assert len(embedded_backend.tokenizer.encode(english, add_special_tokens=False)) <= estimate_text_tokens(english)


async def test_llama_servers_own_template_and_tokenizer_count_the_prompt(tmp_path):
    """llama-server renders its chat template (POST /apply-template) and tokenizes the result
    (POST /tokenize): the bot's count is the server's, however unlike English the text is."""
    import asyncio

    from bot.llm.loading import load_model
    from tests.support.settings import settings_for

    rendered: list[list[dict]] = []

    async def props(request):
        return web.json_response({"default_generation_settings": {"n_ctx": 4096}, "build_info": "b1"})

    async def apply_template(request):
        body = await request.json()
        messages = body["messages"]
        rendered.append(messages)
        # SmolLM3's template closes an empty thought in the prompt where thinking is off
        thought = "" if body.get("chat_template_kwargs", {}).get("enable_thinking") else "<think></think>"
        return web.json_response({"prompt": "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + thought})

    async def tokenize(request):
        content = (await request.json())["content"]
        return web.json_response({"tokens": list(range(len(content.encode("utf-8"))))})  # a token a byte

    app = web.Application()
    app.router.add_get("/props", props)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/tokenize", tokenize)
    async with stub_server(app) as base_url:
        settings = settings_for(tmp_path / "bot.db").with_overrides(
            "model", backend="openai", base_url=base_url, name="nobody/not-on-this-machine")
        model = await asyncio.to_thread(load_model, settings)
        chinese = [{"role": "user", "content": "龙与骑士"}]
        counted = await asyncio.to_thread(model.render, chinese, True)
        without_thinking = await asyncio.to_thread(model.render, chinese, False)
    assert model.server is ServerKind.LLAMA_CPP and model.context_tokens == 4096
    assert model.abilities.counts_exactly
    assert counted.tokens == len("<|user|>龙与骑士".encode("utf-8")) and rendered[-1] == chinese
    assert without_thinking.tokens == counted.tokens + len("<think></think>")  # the switch reaches the count


# --------------------------------------------------------------------------- servers that differ


def refusing(fields_and_bodies: dict[str, tuple[int, dict]]):
    """A server that refuses each of these request fields, with its own status and body, and
    answers once none of them is sent (OpenAI, Groq and FastAPI servers refuse fields they do
    not take)."""
    def play(number, body):
        for field, (status, refusal) in fields_and_bodies.items():
            if field in body:
                return web.json_response(refusal, status=status)
        return whole("Plain answer")
    return play


OPENAI_UNKNOWN = (400, {"error": {"message": "Unrecognized request argument supplied: chat_template_kwargs",
                                  "type": "invalid_request_error", "param": None, "code": None}})
GROQ_UNKNOWN = (400, {"error": {"message": "property 'repetition_penalty' is unsupported",
                                "type": "invalid_request_error"}})
OPENAI_NO_MAX_TOKENS = (400, {"error": {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
               "instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})
OPENAI_FIXED_TEMPERATURE = (400, {"error": {
    "message": "Unsupported value: 'temperature' does not support 0.0 with this model. Only the default (1) value "
               "is supported.", "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}})


async def test_fields_a_server_refuses_are_left_out_from_then_on_with_one_warning_each(store, settings, caplog):
    play = refusing({"chat_template_kwargs": OPENAI_UNKNOWN, "repetition_penalty": GROQ_UNKNOWN,
                     "max_tokens": OPENAI_NO_MAX_TOKENS, "temperature": OPENAI_FIXED_TEMPERATURE})
    with caplog.at_level(logging.WARNING, logger="bot.llm.openai_backend"):
        (first, second), server = await replies_to(play, store, settings, "hello", "and again")
    assert first.ok and first.text == "Plain answer" and second.ok
    last = server.bodies[-1]
    assert last["max_completion_tokens"] == settings.generation.max_new_tokens
    assert not {"chat_template_kwargs", "repetition_penalty", "max_tokens", "temperature", "top_p"} & set(last)
    assert len(server.bodies) == 5 + 1  # four refusals, each once, then two answers
    refused = [r.getMessage() for r in caplog.records if "refused the request field" in r.getMessage()]
    assert len(refused) == 4 and any("repetition penalty is not applied" in line for line in refused)


@pytest.mark.parametrize("status, refusal", [
    (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 512. Given: 900 `inputs` "
                    "tokens and 200 `max_new_tokens`", "error_type": "validation"}),  # TGI
    (400, {"error": {"message": "Please reduce the length of the messages or completion.",
                     "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
    (400, {"error": "Trying to keep the first 900 tokens when context length of only 512 is loaded."}),  # LM Studio
])
async def test_each_servers_way_of_saying_too_long_gets_the_prompt_shortened(store, settings, status, refusal):
    def play(number, body):
        if sum(len(m["content"]) for m in body["messages"]) > 1200:
            return web.json_response(refusal, status=status)
        return whole("Short enough")

    server = PlayedServer(play)
    async with stub_server(server.app()) as base_url:
        service, model = await service_on(base_url, store, settings)
        for number in range(5):  # the fifth no longer fits whole
            reply = await service.reply(said(f"message {number}: " + "words " * 40))
            assert reply.ok and reply.text == "Short enough"
        await model.aclose()
    assert len(server.bodies) > 5  # refused at least once, then sent without the oldest turns


async def test_a_busy_or_loading_server_is_asked_again_once_after_the_wait_it_names(store, settings):
    def play(number, body):
        if number == 1:
            return web.json_response({"error": {"message": "Loading model"}}, status=503, headers={"Retry-After": "0"})
        if number in (3, 4):
            return web.json_response({"error": {"message": "Rate limit reached"}}, status=429,
                                     headers={"Retry-After": "0"})
        return whole("Ready now")

    (after_loading, still_busy), server = await replies_to(play, store, settings, "hello", "and again")
    assert after_loading.ok and after_loading.text == "Ready now"
    assert not still_busy.ok and "busy right now" in still_busy.text  # asked again once, then told
    assert len(server.bodies) == 4


async def test_a_model_that_only_thinks_says_so_instead_of_an_empty_answer(store, settings):
    def play(number, body):
        thought = {"choices": [{"index": 0, "delta": {"reasoning": "Let me think... "}, "finish_reason": None}]}
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
        return [f"data: {json.dumps(thought)}\n\n".encode() * 3, f"data: {json.dumps(done)}\n\n".encode()], "finish"

    (reply,), _ = await replies_to(play, store, settings, "what is 2+2?")
    assert not reply.ok and "spent its whole allowance thinking" in reply.text


async def test_a_whole_document_instead_of_a_stream_is_an_error_not_a_prompt_too_long(store, settings, caplog):
    """A proxy's page or an error sent as 200 JSON read as an empty stream, which llama-cpp-python
    sends for a prompt too long: the message would have been refused and dropped."""
    with caplog.at_level(logging.WARNING, logger="bot.llm.openai_backend"):
        (reply,), _ = await replies_to(lambda number, body: web.json_response({"error": "upstream timed out"}),
                                       store, settings, "hello")
    assert not reply.ok and "application/json instead of a stream" in reply.text
    assert "upstream timed out" in caplog.text and "upstream" not in reply.text  # the operator's to read
    assert await stored(store) == [("user", "hello")]  # kept: the server failed, not the message


async def test_a_server_that_does_not_stream_gets_its_whole_answer_read(store, settings):
    """Some servers (and proxies) ignore "stream": true and send the whole chat completion."""
    completion = {"id": "c1", "object": "chat.completion", "usage": {"prompt_tokens": 12},
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "All at once"},
                               "finish_reason": "stop"}]}
    (reply,), _ = await replies_to(lambda number, body: web.json_response(completion), store, settings, "hello")
    assert reply.ok and reply.text == "All at once"
    assert await stored(store) == [("user", "hello"), ("assistant", "All at once")]


async def test_a_server_unreachable_at_start_is_read_when_it_first_answers(tmp_path, store, settings, caplog):
    """The bot started before its model server (a reboot, compose without a health check): the
    replies meanwhile say the server cannot be reached, and once it answers, what it is and its
    context are read then, not guessed for the bot's whole life."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    remote = settings_for(tmp_path / "bot.db").with_overrides("model", backend="openai", base_url=base_url,
                                                              name="example-org/served-model")
    with caplog.at_level(logging.INFO, logger="bot.llm"):
        model = await asyncio.to_thread(load_model, remote)
    assert "cannot be reached: is it running, and is [model] base_url right?" in caplog.text
    assert model.server is ServerKind.OTHER and model.context_tokens == FALLBACK_CONTEXT_TOKENS
    service = ChatService(store, model, settings)
    early = await service.reply(said("anyone there?"))
    assert not early.ok and "could not be reached" in early.text

    server = PlayedServer(lambda number, body: whole("Here now"))
    app = server.app()
    app.router.add_get("/v1/models", vllm_models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        later = await service.reply(said("and now?"))
    finally:
        await model.aclose()
        await runner.cleanup()
    assert later.ok and later.text == "Here now"
    assert model.server is ServerKind.VLLM and model.context_tokens == 32768
    assert "repetition_penalty" in server.bodies[0] and server.bodies[0]["stream_options"] == {"include_usage": True}
    assert "(32,768 tokens of context, as the server reports)" in await service.status()


async def vllm_models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "example-org/served-model", "object": "model", "owned_by": "vllm", "max_model_len": 32768}]})


async def test_what_a_failing_server_says_goes_to_the_log_not_the_channel(store, settings, caplog):
    """A channel is public: the server's address, and an error page with internal paths and
    hosts, are for the operator; the user reads what failed, in a sentence."""
    page = "<html><body>502 Bad Gateway: upstream 10.0.0.7:8000 (/srv/models/llama) failed</body></html>"

    def play(number, body):
        return web.Response(text=page, status=502, content_type="text/html")

    with caplog.at_level(logging.WARNING, logger="bot.llm.openai_backend"):
        (failed,), _ = await replies_to(play, store, settings, "hello")
    assert not failed.ok and "The model server failed (HTTP 502)." in failed.text
    assert "10.0.0.7" not in failed.text and "10.0.0.7" in caplog.text

    closed_port = free_port()
    service, model = await service_on(f"http://10.0.0.7.invalid:{closed_port}/v1", store, settings)
    unreachable = await service.reply(said("anyone?"))
    await model.aclose()
    assert not unreachable.ok and "could not be reached" in unreachable.text and "10.0.0.7" not in unreachable.text


async def test_a_request_that_cannot_be_made_is_a_sentence_not_a_traceback(store, settings, caplog):
    """An address aiohttp cannot even ask (no scheme: the config refuses it now, but any other
    request error would do): before, its error escaped the backend and ended the terminal chat
    with a traceback."""
    service, model = await service_on("127.0.0.1:8000/v1", store, settings)
    with caplog.at_level(logging.WARNING, logger="bot.llm.openai_backend"):
        reply = await service.reply(said("hello"))
    await model.aclose()
    assert not reply.ok and "could not be asked" in reply.text
    assert "check [model] base_url" in caplog.text
