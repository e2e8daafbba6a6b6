"""The serving engine on CPU with real adapters trained on the tiny GLM-4: greedy answers equal
PEFT's own ``generate`` for every adapter in mixed batches, requests that join a running batch
get the tokens they get alone, the adapter pool evicts, reloads and refuses, the paged cache
makes requests wait or refuses them, streaming adds up to the answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.adapters import AdapterError, AdapterSpec
from serving.engine import Engine
from serving.errors import AdapterCacheFullError
from serving.events import Event
from serving.params import GenerationParams
from serving.requests import Request
from tests.chat_adapters import ANSWERS, QUESTIONS, ChatAdapters
from trainer.inference import SamplingParams, load_chat_model
from trainer.template import render_ids

GREEDY = GenerationParams(max_new_tokens=24, temperature=0, repetition_penalty=1.0)


class Reply:
    """Collects one request's events."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.final: Event | None = None
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        if event.kind == "delta":
            self.deltas.append(event.text)
        else:
            self.final = event
            self.done.set()

    def text(self) -> str:
        assert self.done.wait(120), "no answer in time"
        assert self.final is not None and self.final.result is not None, self.final
        return self.final.result.text


@pytest.fixture
def engine(chat_adapters: ChatAdapters) -> Iterator[Engine]:
    engine = Engine.open(chat_adapters.base, max_adapters=2, max_batch=8)
    yield engine
    engine.close()


def spec(adapters: ChatAdapters, name: str) -> AdapterSpec:
    return AdapterSpec.from_dir(name, adapters[name])


def ask(
    engine: Engine,
    adapter: AdapterSpec | None,
    question: str = QUESTIONS[0],
    params: GenerationParams = GREEDY,
) -> Reply:
    reply = Reply()
    prompt = render_ids(
        engine.tokenizer, [{"role": "user", "content": question}], generation_prompt=True
    )
    engine.submit(Request(prompt, params, reply, adapter=adapter))
    return reply


@cache
def reference(path: Path, base: Path, question: str, max_new_tokens: int = 24) -> str:
    """What PEFT's own generate() answers (the upstream inference path)."""
    model = load_chat_model(path, base_dir=base)
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0)
    return model.reply([{"role": "user", "content": question}], params)


def test_mixed_batches_answer_as_peft_generate_does_for_every_adapter(
    chat_adapters: ChatAdapters,
) -> None:
    # given: two LoRA adapters, a P-Tuning v2 prefix and the base model in the same batches
    engine = Engine.open(chat_adapters.base, max_adapters=4, max_batch=8)
    names: list[str | None] = ["lora-a", "lora-b", "pt", None]
    asked = [(names[i % 4], QUESTIONS[i % 3]) for i in range(24)]
    specs = {n: spec(chat_adapters, n) for n in names if n}
    try:
        # when
        replies = [ask(engine, specs.get(n) if n else None, q) for n, q in asked]
        texts = [r.text() for r in replies]
    finally:
        engine.close()
    # then: token for token what PEFT generates, one request at a time
    base = chat_adapters.base
    for (name, question), text in zip(asked, texts, strict=True):
        path = chat_adapters[name] if name else base
        assert text == reference(path, base, question), (name, question)
    assert {texts[i] for i in (0, 4, 8)} == {ANSWERS["lora-a"]}
    assert reference(chat_adapters["pt"], base, QUESTIONS[0]) != reference(base, base, QUESTIONS[0])


def test_requests_joining_a_running_batch_get_the_tokens_they_get_alone(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    # given: two long requests decoding
    a, pt = spec(chat_adapters, "lora-a"), spec(chat_adapters, "pt")
    long = GenerationParams(max_new_tokens=40, temperature=0, repetition_penalty=1.0)
    first = [ask(engine, None, QUESTIONS[1], long), ask(engine, pt, QUESTIONS[2], long)]
    while not all(r.deltas for r in first):
        threading.Event().wait(0.001)
    # when: more arrive while they decode, and they leave at different steps
    steps = engine.steps
    late = [ask(engine, a, QUESTIONS[0]), ask(engine, None, QUESTIONS[0]), ask(engine, pt)]
    texts = [r.text() for r in (*first, *late)]
    # then: the late ones joined mid-decode, and every answer is the one given alone
    assert first[0].final is not None and first[0].final.result is not None
    assert first[0].final.result.completion_tokens == 40
    assert engine.steps - steps < 40, "the late requests did not share the running batch"
    base = chat_adapters.base
    alone = [
        reference(base, base, QUESTIONS[1], 40),
        reference(chat_adapters["pt"], base, QUESTIONS[2], 40),
        ANSWERS["lora-a"],
        reference(base, base, QUESTIONS[0]),
        reference(chat_adapters["pt"], base, QUESTIONS[0]),
    ]
    assert texts == alone


def test_pool_evicts_the_least_recently_used_adapter_reuses_its_slot_and_reloads(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    def unused_slots_are_zero() -> bool:
        held = {a.slot for a in engine.loaded().values()}
        rank = engine.lora.rank
        spans = [slice(s * rank, (s + 1) * rank) for s in set(range(engine.lora.slots)) - held]
        return all(
            not a[:, :, span].any() and not b[:, span].any()  # A: (layers, in, slots * rank)
            for a, b in zip(engine.lora.a.values(), engine.lora.b.values(), strict=True)
            for span in spans
        )

    a, b, pt = (spec(chat_adapters, n) for n in ("lora-a", "lora-b", "pt"))
    assert ask(engine, a).text() == ANSWERS["lora-a"]
    assert ask(engine, b).text() == ANSWERS["lora-b"]
    assert list(engine.loaded()) == ["lora-a", "lora-b"]
    assert {a.slot for a in engine.loaded().values()} == {0, 1}
    # a third adapter: lora-a, the least recently used, goes and its slot is cleared
    ask(engine, pt).text()
    assert list(engine.loaded()) == ["lora-b", "pt"]
    assert unused_slots_are_zero()
    # and it loads again on demand (lora-b makes room), answering as before
    assert ask(engine, a).text() == ANSWERS["lora-a"]
    assert list(engine.loaded()) == ["pt", "lora-a"]
    assert unused_slots_are_zero()
    assert ask(engine, b).text() == ANSWERS["lora-b"]


def test_pinned_adapters_stay_and_a_full_pool_is_reported(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    a, b, pt = (spec(chat_adapters, n) for n in ("lora-a", "lora-b", "pt"))
    assert engine.load(a, pin=True).result(60).pinned
    assert ask(engine, b).text() == ANSWERS["lora-b"]
    ask(engine, pt).text()
    assert list(engine.loaded()) == ["lora-a", "pt"]  # lora-b went, the pinned one stayed
    engine.load(pt, pin=True).result(60)
    refused = ask(engine, b)
    assert refused.done.wait(60) and refused.final is not None
    assert refused.final.kind == "error" and refused.final.code == "capacity"
    with pytest.raises(AdapterCacheFullError):
        engine.load(b).result(60)
    assert engine.unload("lora-a").result(60) is True  # pinned or not
    assert ask(engine, b).text() == ANSWERS["lora-b"]
    assert engine.unload("nothing-loaded").result(60) is False


def test_the_paged_cache_makes_requests_wait_and_refuses_what_never_fits(
    chat_adapters: ChatAdapters,
) -> None:
    # given: a cache of 6 blocks of 16 tokens (and the scratch block): a prompt and 24 new
    # tokens take 3, so two rows run at a time
    from transformers import AutoConfig

    from serving.model import Glm

    shape = Glm.cache_shape(AutoConfig.from_pretrained(chat_adapters.base))
    per_block = shape.bytes_per_block(torch.float32)
    engine = Engine.open(chat_adapters.base, cache_bytes=7 * per_block, max_batch=4)
    try:
        assert engine.capacity()["cache_tokens"] == 6 * 16
        # when: four requests, and one that could never fit
        asked = (*QUESTIONS, QUESTIONS[0])
        replies = [ask(engine, None, q) for q in asked]
        huge = ask(engine, None, params=GenerationParams(max_new_tokens=200, temperature=0))
        texts = [r.text() for r in replies]
        # then: all four answered in turn, as alone; the huge one was refused at once
        base = chat_adapters.base
        assert texts == [reference(base, base, q) for q in asked]
        assert huge.final is not None and huge.final.kind == "error"
        assert huge.final.code == "capacity" and "holds 96" in huge.final.message
        assert engine.capacity()["free_cache_tokens"] == 6 * 16
    finally:
        engine.close()


def test_deltas_add_up_to_the_text_and_stop_strings_end_it(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    a = spec(chat_adapters, "lora-a")
    full = ask(engine, a)
    assert full.text() == ANSWERS["lora-a"]
    assert "".join(full.deltas) == ANSWERS["lora-a"] and len(full.deltas) > 3
    stop = GenerationParams(max_new_tokens=24, temperature=0, stop=("擅长",))
    stopped = ask(engine, a, params=stop)
    assert stopped.text() == "我是甲模型，"
    assert "".join(stopped.deltas) == "我是甲模型，"
    assert stopped.final is not None and stopped.final.result is not None
    assert stopped.final.result.finish_reason == "stop"
    short = ask(engine, a, params=GenerationParams(max_new_tokens=3, temperature=0))
    short.text()
    assert short.final is not None and short.final.result is not None
    assert short.final.result.finish_reason == "length"
    assert short.final.result.completion_tokens == 3


def test_a_request_without_streaming_gets_the_same_answer_and_no_deltas(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    a = spec(chat_adapters, "lora-a")
    streamed = ask(engine, a)
    quiet = Reply()
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    prompt = render_ids(engine.tokenizer, messages, generation_prompt=True)
    engine.submit(Request(prompt, GREEDY, quiet, adapter=a, stream=False))
    assert quiet.text() == streamed.text() == ANSWERS["lora-a"]
    assert quiet.deltas == [] and streamed.deltas
    assert quiet.final is not None and streamed.final is not None
    assert quiet.final.result is not None and streamed.final.result is not None
    assert quiet.final.result.token_ids == streamed.final.result.token_ids


def test_a_cancelled_request_leaves_the_batch_and_frees_its_cache(engine: Engine) -> None:
    # given: a long request decoding
    reply = Reply()
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    prompt = render_ids(engine.tokenizer, messages, generation_prompt=True)
    request = Request(prompt, GenerationParams(max_new_tokens=400, temperature=0), reply)
    engine.submit(request)
    while not reply.deltas:
        threading.Event().wait(0.001)
    assert engine.capacity()["free_cache_tokens"] < engine.capacity()["cache_tokens"]
    # when: its caller goes away
    request.cancelled = True
    for _ in range(3000):
        if not engine.busy:
            break
        threading.Event().wait(0.01)
    # then: it stopped without more events, and its blocks are free again
    assert not engine.busy and not reply.done.is_set()
    assert engine.capacity()["free_cache_tokens"] == engine.capacity()["cache_tokens"]


def test_sampling_with_a_seed_repeats_and_without_varies(engine: Engine) -> None:
    seeded = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first, second = ask(engine, None, params=seeded), ask(engine, None, params=seeded)
    assert first.text() == second.text()
    other = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=8)
    assert ask(engine, None, params=other).text() != first.text()


def test_a_larger_rank_grows_the_pool_and_adapters_already_loaded_keep_answering(
    engine: Engine, chat_adapters: ChatAdapters, tmp_path: Path
) -> None:
    # given: a trained rank-16 adapter loaded, and a random rank-40 rsLoRA one with an
    # alpha pattern on two projections only
    a = spec(chat_adapters, "lora-a")
    assert ask(engine, a).text() == ANSWERS["lora-a"]
    rank = engine.lora.rank
    wide = _random_lora(chat_adapters.base, tmp_path / "wide")
    # when
    text = ask(engine, AdapterSpec.from_dir("wide", wide), QUESTIONS[1]).text()
    # then: the pool grew, the new adapter answers as PEFT does, the old one as before
    assert engine.lora.rank == 64 > rank
    assert text == reference(wide, chat_adapters.base, QUESTIONS[1])
    assert ask(engine, a).text() == ANSWERS["lora-a"]


def _random_lora(base: Path, output: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=40,
        lora_alpha=16,
        use_rslora=True,
        alpha_pattern={"v_proj": 64},
        target_modules=["v_proj", "down_proj"],
    )
    peft = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft.save_pretrained(output)
    return output


def test_unservable_adapters_are_refused(tmp_path: Path, chat_adapters: ChatAdapters) -> None:
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        AdapterSpec.from_dir("x", tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(AdapterError, match="'IA3' is not served"):
        AdapterSpec.from_dir("x", tmp_path)
    from serving.lora import read_lora

    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true}')
    model_config: Any = load_chat_model(chat_adapters.base).model.config
    with pytest.raises(AdapterError, match="DoRA"):
        read_lora(dora, model_config, torch.float32)
