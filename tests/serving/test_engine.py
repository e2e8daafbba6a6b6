"""The chat engine on CPU with real adapters trained on the tiny GLM-4: every request gets its
own adapter's answer in mixed batches, the LRU cache evicts, reloads and frees, streaming adds
up to the answer, stop strings and length limits end it."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from serving.adapters import AdapterError, AdapterSpec
from serving.engine import AdapterCacheFullError, Engine, Request
from serving.events import Event
from serving.sampling import GenerationParams
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


def reference(path: Any, base: Any, question: str) -> str:
    """What PEFT's own generate() answers (the upstream inference path)."""
    model = load_chat_model(path, base_dir=base)
    params = SamplingParams(max_new_tokens=24, do_sample=False, repetition_penalty=1.0)
    return model.reply([{"role": "user", "content": question}], params)


def test_mixed_requests_each_get_their_own_adapters_answer(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    names: list[str | None] = ["lora-a", "lora-b", "pt", None]
    asked = [(names[i % 4], QUESTIONS[i % 3]) for i in range(20)]
    specs = {n: spec(chat_adapters, n) for n in names if n}
    # two LoRA rows and base rows share batches; the prefix rows batch on their own
    replies = [ask(engine, specs.get(n) if n else None, q) for n, q in asked]
    texts = [r.text() for r in replies]
    base_answer = reference(chat_adapters.base, None, QUESTIONS[0])
    prefix_answer = reference(chat_adapters["pt"], chat_adapters.base, QUESTIONS[0])
    for (name, question), text in zip(asked, texts, strict=True):
        if name in ("lora-a", "lora-b"):
            assert text == ANSWERS[name], (name, question, text)
        elif question == QUESTIONS[0]:
            assert text == (prefix_answer if name == "pt" else base_answer), (name, text)
    # P-Tuning on a tiny random model learns its answer only roughly: its own answer is what
    # PEFT generates with it, which differs from the base model's
    assert prefix_answer != base_answer and base_answer not in ANSWERS.values()


def test_cache_evicts_least_recently_used_reloads_and_frees(
    engine: Engine, chat_adapters: ChatAdapters
) -> None:
    a, b, pt = (spec(chat_adapters, n) for n in ("lora-a", "lora-b", "pt"))
    assert ask(engine, a).text() == ANSWERS["lora-a"]
    weight = next(p for n, p in engine.model.named_parameters() if ".lora_A.lora-a." in n)
    gone = weakref.ref(weight)
    del weight
    assert ask(engine, b).text() == ANSWERS["lora-b"]
    assert list(engine.loaded()) == ["lora-a", "lora-b"]
    ask(engine, pt).text()  # a third one: lora-a, the least recently used, is unloaded
    assert list(engine.loaded()) == ["lora-b", "pt"]
    gc.collect()
    assert gone() is None, "the unloaded adapter's weights are still referenced"
    assert ask(engine, a).text() == ANSWERS["lora-a"]  # and loads again on demand
    assert list(engine.loaded()) == ["pt", "lora-a"]


def test_pinned_adapters_stay_and_a_full_cache_is_reported(
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


def test_sampling_with_a_seed_repeats_and_without_varies(engine: Engine) -> None:
    seeded = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first, second = ask(engine, None, params=seeded), ask(engine, None, params=seeded)
    assert first.text() == second.text()
    other = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=8)
    assert ask(engine, None, params=other).text() != first.text()


def test_an_unservable_adapter_directory_is_refused(tmp_path: Any) -> None:
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        AdapterSpec.from_dir("x", tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(AdapterError, match="'IA3' is not served"):
        AdapterSpec.from_dir("x", tmp_path)
