"""The tiny GLM-4 builder: loading, glm-4-9b-chat template parity, special tokens, determinism."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmForCausalLM

from trainer.commands import tiny_model as cmd
from trainer.tiny import (
    CHAT_TEMPLATE_PATH,
    SPECIAL_TOKENS,
    STOP_TOKENS,
    build_tiny_model,
    synthetic_corpus,
)

PREAMBLE = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。"
)
TOOL_SUFFIX = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
WEATHER_FN: dict[str, Any] = {
    "name": "get_weather",
    "description": "查询指定城市的天气 <b>&</b>",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "城市名称"}},
        "required": ["city"],
    },
}
ROUND_TRIP = (
    '北京有什么好吃的？Try the 烤鸭 at 7:30pm! {"city": "北京", "n": [1, 2.5e-3]}\n'
    "  def f(x):\n\treturn x  # ¥99 🙂 café\r\n\n"
)


def render(tok: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    out: str = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    return out


# (a) loading ---------------------------------------------------------------------------------


def test_auto_classes_load_a_native_glm(tiny_model_dir: Path, tiny_tokenizer: Any) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model) is GlmForCausalLM
    cfg = model.config
    assert cfg.model_type == "glm"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim) == (64, 2, 16)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 128)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5
    assert cfg.attention_bias
    assert not cfg.tie_word_embeddings
    assert cfg.vocab_size % 64 == 0
    assert len(tiny_tokenizer) <= cfg.vocab_size < len(tiny_tokenizer) + 64
    stop_ids = tiny_tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))
    assert cfg.eos_token_id == stop_ids
    assert cfg.pad_token_id == tiny_tokenizer.pad_token_id == stop_ids[0]
    gen = model.generation_config
    assert gen.eos_token_id == stop_ids
    assert gen.pad_token_id == stop_ids[0]
    assert (gen.do_sample, gen.top_p, gen.temperature, gen.repetition_penalty) == (
        True,
        0.8,
        0.8,
        1.2,
    )


def test_tokenizer_settings(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    assert tok.clean_up_tokenization_spaces is False
    assert tok.model_max_length == 8192
    assert tok.chat_template == CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


# (b) chat template: golden renderings -------------------------------------------------------------


def test_render_system_user_generation_prompt(tiny_tokenizer: Any) -> None:
    msgs = [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": "北京有什么好吃的？"},
    ]
    assert render(tiny_tokenizer, msgs, add_generation_prompt=True) == (
        "[gMASK]<sop><|system|>\n你是助手<|user|>\n北京有什么好吃的？<|assistant|>"
    )
    one = [{"role": "user", "content": "#裙子#夏天"}]
    assert render(tiny_tokenizer, one, add_generation_prompt=True) == (
        "[gMASK]<sop><|user|>\n#裙子#夏天<|assistant|>"
    )
    assert render(tiny_tokenizer, one) == "[gMASK]<sop><|user|>\n#裙子#夏天"


def test_render_tools_call_observation_and_empty_messages(tiny_tokenizer: Any) -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "", "tools": [{"type": "function", "function": WEATHER_FN}]},
        {"role": "user", "content": "北京天气怎么样？"},
        {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'},
        {"role": "observation", "content": '{"temperature": 20}'},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "北京今天20度。"},
    ]
    # transformers renders chat templates with trim_blocks=True, which drops the first "\n" after
    # `{% if tool['type'] == 'function' %}`: the real glm-4-9b-chat renders "\n## name" here too.
    expected = (
        "[gMASK]<sop><|system|>\n" + PREAMBLE + "\n\n# 可用工具"
        "\n## get_weather\n\n"
        + json.dumps(WEATHER_FN, ensure_ascii=False, indent=4)
        + TOOL_SUFFIX
        + "<|user|>\n北京天气怎么样？"
        '<|assistant|>get_weather\n{"city": "北京"}'
        '<|observation|>\n{"temperature": 20}'
        "<|assistant|>\n北京今天20度。"
    )
    assert render(tiny_tokenizer, msgs) == expected


def test_render_tools_with_system_content_and_builtin_tools(tiny_tokenizer: Any) -> None:
    tools = [
        {"type": "function", "function": WEATHER_FN},
        {"type": "python"},
        {"type": "simple_browser"},
        {"type": "cogview"},
    ]
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "回答要简短", "tools": tools},
        {"role": "user", "content": "hi"},
    ]
    text = render(tiny_tokenizer, msgs, add_generation_prompt=True)
    fn_block = "\n## get_weather\n\n" + json.dumps(WEATHER_FN, ensure_ascii=False, indent=4)
    assert text.startswith("[gMASK]<sop><|system|>\n" + PREAMBLE + "\n\n# 可用工具" + fn_block)
    assert TOOL_SUFFIX + "\n## python\n\n当你向 `python` 发送包含 Python 代码的消息时" in text
    assert "\n## simple_browser\n\n你可以使用 `simple_browser` 工具。" in text
    assert "使用 `【{引用 id}†{引用文本}】` 来引用内容。" in text
    assert "\n## cogview\n\n如果用户的请求中包含了对图像的描述" in text
    assert text.endswith(
        "持有中国立场并遵循中国社会主义价值观。<|system|>\n回答要简短<|user|>\nhi<|assistant|>"
    )


def test_chat_template_ids_have_single_prefix(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    msgs = [{"role": "user", "content": "你好"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    gmask, sop, user, nl = tok.convert_tokens_to_ids(["[gMASK]", "<sop>", "<|user|>", "Ċ"])
    assert ids[:4] == [gmask, sop, user, nl]
    assert ids.count(gmask) == 1
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.decode(ids) == "[gMASK]<sop><|user|>\n你好<|assistant|>"


# (c) special tokens ------------------------------------------------------------------------------


def test_special_tokens_follow_the_regular_vocab(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    first = ids[0]
    assert ids == list(range(first, first + 14))
    assert ids[-1] == len(tok) - 1
    regular = {t: i for t, i in tok.get_vocab().items() if t not in SPECIAL_TOKENS}
    assert len(regular) == first
    assert max(regular.values()) == first - 1
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    for token, token_id in zip(SPECIAL_TOKENS, ids, strict=True):
        assert tok.encode(token, add_special_tokens=False) == [token_id]
        assert tok.convert_ids_to_tokens(token_id) == token


# (d) plain encode ------------------------------------------------------------------------------


def test_encode_prepends_gmask_sop(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    prefix = tok.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    bare = tok.encode("hello 你好", add_special_tokens=False)
    assert tok.encode("hello 你好") == prefix + bare
    assert prefix[0] not in bare
    assert prefix[1] not in bare
    assert tok("hi")["input_ids"][:2] == prefix


# (e) round trip ---------------------------------------------------------------------------------


def test_decode_round_trip_is_exact(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    for text in (ROUND_TRIP, *synthetic_corpus(60), json.dumps(WEATHER_FN, ensure_ascii=False)):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.decode(tok.encode(ROUND_TRIP), skip_special_tokens=True) == ROUND_TRIP
    # The vocabulary is trained on zh/en/JSON: common text is well below one token per byte.
    sample = "这款连衣裙采用了棉面料，穿着舒适透气。" + json.dumps(WEATHER_FN, ensure_ascii=False)
    assert len(tok.encode(sample, add_special_tokens=False)) < 0.6 * len(sample.encode())


def test_split_regex_matches_glm4(tiny_tokenizer: Any) -> None:
    pieces = tiny_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("I'm 12345 ok!!\n\n")
    decoder = tiny_tokenizer.backend_tokenizer.decoder
    decoded = [decoder.decode([piece]) for piece, _ in pieces]
    assert decoded == ["I", "'m", " ", "123", "45", " ok", "!!\n\n"]


# (f) determinism --------------------------------------------------------------------------------


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_same_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _files(again) == _files(tiny_model_dir)
    other = _files(build_tiny_model(tmp_path / "other", seed=1))
    base = _files(tiny_model_dir)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert other["tokenizer.json"] == base["tokenizer.json"]


def test_options_change_shape(tmp_path: Path) -> None:
    out = build_tiny_model(tmp_path / "wide", hidden_size=128, layers=1, vocab_size=1000)
    cfg = AutoModelForCausalLM.from_pretrained(out).config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.intermediate_size) == (
        128,
        1,
        32,
        256,
    )
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 1000
    assert cfg.vocab_size == 1024
    with pytest.raises(ValueError, match="multiple of 16"):
        build_tiny_model(tmp_path / "bad", hidden_size=40)


# (g) generation -------------------------------------------------------------------------------


def test_generate_runs(tiny_model_dir: Path, tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = [[{"role": "user", "content": "你好"}], [{"role": "user", "content": "写一句广告词"}]]
    inputs = tok.apply_chat_template(
        batch, add_generation_prompt=True, return_dict=True, return_tensors="pt", padding=True
    )
    assert inputs["attention_mask"][0, 0] == 0  # left padding
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    assert out.shape[0] == 2
    assert n_prompt < out.shape[1] <= n_prompt + 6
    assert isinstance(tok.decode(out[0, n_prompt:], skip_special_tokens=True), str)


# command ---------------------------------------------------------------------------------------


def _run_cmd(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(list(argv)))


def test_command_writes_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert _run_cmd(str(out), "--seed", "3") == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert (out / "model.safetensors").is_file()
    assert (out / "chat_template.jinja").is_file()
    assert _run_cmd(str(out)) == 0  # an earlier model directory is overwritten

    capsys.readouterr()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert _run_cmd(str(busy)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "refusing" in err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert _run_cmd(str(busy / "notes.txt")) == 2
    assert _run_cmd(str(tmp_path / "x"), "--hidden-size", "40") == 2
