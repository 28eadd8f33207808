"""Streaming detokenization (bot/llm/detokenize.py IncrementalText): the deltas add up to the
decode of all the tokens, no character is sent half-made, and each token costs a decode of a
few tokens, however long the answer."""

from __future__ import annotations

import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.llm.detokenize import IncrementalText
from bot.llm.transformers_backend import TransformersBackend

MIXED = "Crème brûlée 🙂👍🏽 — 世界 ok"
PROSE = ("The quick brown fox jumps over the lazy dog. It wasn't the dog's fault, really; "
         "he'd had a long day. \"Well?\" she asked -- and nobody answered!\n\nNew paragraph.")
CODE = ('def greet(name: str) -> str:\n    """Say hello."""\n    if not name:\n\t\treturn "hi"\n'
        '    return f"Hello, {name}!"  # ok\n\n\nclass A:\n        pass\n')
CHINESE = ("人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。\n"
           "该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。日本語も少し：こんにちは、世界！")
ODD = "ça déjà vu · naïve façade · Ωμέγα · עברית · العربية · 😀😃😄 👩‍👩‍👧‍👦 🇫🇷 ★☆ ½ ∑∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
TEXTS = [PROSE, CODE, MIXED, CHINESE, ODD, "", " ", "\n\n", "🙂", "a  b   c    "]

PIECES = [PROSE, CODE, MIXED, CHINESE, ODD, "Hello there, how are you doing today?",
          "for i in range(10):\n    print(i ** 2)\n", "Café, naïve, résumé. ", "你好吗？我很好。",
          "🙂🙃🤔👍🏽👎🏿🧑‍💻 ", "    indented\n\tand tabbed\n", "x = [1, 2, 3]; y = {'a': 1}\n"]


def long_text(tokenizer, tokens: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    while len(tokenizer.encode("".join(parts), add_special_tokens=False)) < tokens:
        parts.extend(rng.choice(PIECES) for _ in range(20))
    return "".join(parts)


def streamed(decode, ids: list[int], **options) -> list[str]:
    text = IncrementalText(decode, **options)
    return [text.push(token) for token in ids] + [text.finish()]


def assert_streams_exactly(decode, ids: list[int], **options) -> None:
    deltas = streamed(decode, ids, **options)
    assert "".join(deltas) == decode(ids)
    assert not any("\ufffd" in delta for delta in deltas)


class Recorded:
    """A decode that notes how many tokens each call is given."""

    def __init__(self, decode):
        self.decode = decode
        self.sizes: list[int] = []

    def __call__(self, token_ids: list[int]) -> str:
        self.sizes.append(len(token_ids))
        return self.decode(token_ids)


@pytest.fixture(scope="module")
def tiny_backend(tiny_smollm3_dir) -> TransformersBackend:
    """The tiny SmolLM3 (its tokenizer has <think> and </think> as tokens of their own)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_smollm3_dir).eval()
    return TransformersBackend(model, AutoTokenizer.from_pretrained(tiny_smollm3_dir),
                               name="tiny-smollm3", thinking=False)


@pytest.fixture(params=["embedded", "tiny"])
def backend(request) -> TransformersBackend:
    return request.getfixturevalue("embedded_backend" if request.param == "embedded" else "tiny_backend")


def encode(backend, text: str) -> list[int]:
    return backend.tokenizer.encode(text, add_special_tokens=False)


def im_end(backend) -> int:
    return backend.tokenizer.convert_tokens_to_ids("<|im_end|>")


# The deltas add up to the whole decode --------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_decode(backend, text):
    ids = encode(backend, text)
    assert_streams_exactly(backend.decode, ids)
    assert_streams_exactly(backend.decode, ids + [im_end(backend)])  # as the engine sees it


def test_a_long_answer(backend):
    ids = encode(backend, long_text(backend.tokenizer, 3000))
    assert len(ids) >= 3000
    assert_streams_exactly(backend.decode, ids + [im_end(backend)])


def test_characters_are_never_sent_half_made(backend):
    ids = encode(backend, MIXED)
    assert len(ids) > len(MIXED.split())  # some characters do span several tokens
    deltas = streamed(backend.decode, ids)
    assert "".join(deltas) == MIXED
    assert not any("\ufffd" in delta for delta in deltas)
    assert "🏽" in "".join(deltas[:-1])  # settled characters are sent as they complete, not at the end


def test_reasoning_markers_and_the_stop_token(backend):
    text = "<think>\nThe user greets me. 🙂 I should greet back.\n</think>\nHello! 世界"
    ids = encode(backend, text) + [im_end(backend)]
    assert backend.decode(ids) == text
    assert_streams_exactly(backend.decode, ids)  # a stop token comes last: the engine stops there


def test_special_tokens_inside_the_answer_are_removed_as_they_come(embedded_backend):
    backend = embedded_backend
    start = backend.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert start not in backend.stop_ids
    for ids in ([start] + encode(backend, "Hi there"),
                encode(backend, "Hi") + [start] + encode(backend, " there 🙂") + [start, start],
                encode(backend, "世") + [start] + encode(backend, "界") + [im_end(backend)]):
        assert_streams_exactly(backend.decode, ids)


def test_spelled_special_tokens_are_held_until_they_resolve(embedded_backend):
    """The decode removes a special token's text even when the model spells it with ordinary
    tokens; told what it removes, the stream holds back a start of it until it is settled."""
    backend = embedded_backend
    spelled = encode(backend, "<|") + encode(backend, "im_end|>")
    assert backend.decode(spelled) == ""
    ids = encode(backend, "Hi") + spelled + encode(backend, " there <| ok <|im_")
    assert_streams_exactly(backend.decode, ids, hold=backend.tokenizer.all_special_tokens)
    # Not told: the text spelled is sent before the decode removes it, but the rest still comes.
    deltas = streamed(backend.decode, ids)
    assert "".join(deltas).endswith(" there <| ok <|im_")


# Constant work per token -----------------------------------------------------------------


def test_each_decode_sees_a_few_tokens_however_long_the_answer(backend):
    ids = encode(backend, long_text(backend.tokenizer, 3000, seed=11)) + [im_end(backend)]
    decode = Recorded(backend.decode)
    deltas = streamed(decode, ids)
    assert "".join(deltas) == backend.decode(ids)
    assert max(decode.sizes) <= 16
    assert sum(decode.sizes) <= 6 * len(ids)


def test_text_is_the_decode_so_far(backend):
    ids = encode(backend, long_text(backend.tokenizer, 400, seed=3))
    decode = Recorded(backend.decode)
    text = IncrementalText(decode)
    for count, token in enumerate(ids, start=1):
        text.push(token)
        if count % 37 == 0 or count in (1, 2, 3):
            calls = len(decode.sizes)
            assert text.text == backend.decode(ids[:count])
            assert len(decode.sizes) == calls  # read without decoding
    text.finish()
    assert text.text == backend.decode(ids)


# Tokenizers of other kinds (decodes written out here) ------------------------------------


def byte_decode(token_ids: list[int]) -> str:
    """Byte-level tokens: token i is the byte i, decoded with U+FFFD for broken characters."""
    return bytes(token_ids).decode("utf-8", "replace")


def test_bytes_one_token_each():
    ids = list((MIXED + CHINESE + ODD).encode())
    decode = Recorded(byte_decode)
    deltas = streamed(decode, ids)
    assert "".join(deltas) == byte_decode(ids)
    assert not any("\ufffd" in delta for delta in deltas)
    assert max(decode.sizes) <= 9  # a 4-byte character and the one before


def test_a_model_writing_broken_characters_still_streams_exactly():
    vocabulary = [b"a\xf0", b"\x9f\x99\x82", b"\x80", b" ", b"\xe4\xb8", b"\x96", b"\xff", b"ok"]
    decode = Recorded(lambda ids: b"".join(vocabulary[i] for i in ids).decode("utf-8", "replace"))
    rng = random.Random(5)
    for ids in ([0] * 300 + [1], [2] * 100 + [7], [rng.randrange(len(vocabulary)) for _ in range(2000)]):
        deltas = streamed(decode, ids)
        assert "".join(deltas) == decode(ids)
    decode.sizes.clear()
    streamed(decode, [0] * 300 + [1])  # every text ends with half a character: cut where it splits
    assert max(decode.sizes) <= 32


SENTENCEPIECE = ["▁Hello", "▁world", ",", "▁how", "▁are", "▁you", "?", "<s>", "▁I", "'m", "▁fine", "<0xF0>",
                 "<0x9F>", "<0x99>", "<0x82>", "▁", "</s>"]


def sentencepiece_decode(token_ids: list[int]) -> str:
    """Like a Llama tokenizer: "▁" is a space, dropped at the start of a decode; bytes fall back
    to <0xNN> tokens; "<s>" is removed, "</s>" ends the text."""
    pieces = [SENTENCEPIECE[i] for i in token_ids]
    if "</s>" in pieces:
        pieces = pieces[:pieces.index("</s>")]
    data = b"".join(bytes([int(p[3:5], 16)]) if p.startswith("<0x") else p.replace("▁", " ").encode()
                    for p in pieces)
    text = data.decode("utf-8", "replace")
    return (text[1:] if text.startswith(" ") else text).replace("<s>", "")


def test_a_tokenizer_that_drops_the_first_space():
    rng = random.Random(9)
    for _ in range(200):
        ids = [rng.randrange(len(SENTENCEPIECE) - 1) for _ in range(rng.randrange(1, 40))] + [16]
        assert "".join(streamed(sentencepiece_decode, ids)) == sentencepiece_decode(ids)
    emoji = [11, 12, 13, 14]
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15] + emoji + [10, 16]
    deltas = streamed(sentencepiece_decode, ids)
    assert "".join(deltas) == "Hello world, how are you? I'm 🙂 fine"
    assert not any("\ufffd" in delta for delta in deltas)
