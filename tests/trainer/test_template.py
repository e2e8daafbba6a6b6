"""Loss masks, truncation and eval prompts against the upstream demo's rules.

glm4-reference.md §1.4 and §1.5 describe them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainer.template import (
    IGNORE_INDEX,
    SpecialTokens,
    clean_message,
    encode_eval,
    encode_train,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "查询天气",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

MULTI_TURN = [
    {"role": "system", "content": "你是一名导购。"},
    {"role": "user", "content": "类型#裙*颜色#红色"},
    {"role": "assistant", "content": "这款红色裙热情大方。"},
    {"role": "user", "content": "换成白色呢？"},
    {"role": "assistant", "content": "白色裙干净清爽。"},
]
TOOL_CALL = [
    {"role": "system", "content": "", "tools": TOOLS},
    {"role": "user", "content": "北京天气怎么样？"},
    {"role": "assistant", "metadata": "get_weather", "content": json.dumps({"city": "北京"})},
    {"role": "observation", "content": json.dumps({"weather": "晴"}, ensure_ascii=False)},
    {"role": "assistant", "content": "北京今天晴。"},
]
CONVERSATIONS = [MULTI_TURN, TOOL_CALL, MULTI_TURN[1:3]]


def upstream_process_batch(
    tokenizer: Any, conv: list[dict[str, Any]], combine: bool, max_in: int, max_out: int
) -> tuple[list[int], list[int]]:
    """A literal port of the demo's ``process_batch`` with ids looked up instead of hard-coded."""
    tok = tokenizer.convert_tokens_to_ids
    if not combine:
        input_ids, loss_masks = [tok("[gMASK]"), tok("<sop>")], [False, False]
        for message in conv:
            message = clean_message(message)
            loss_mask_val = message["role"] not in ("system", "user", "observation")
            new_input_ids = tokenizer.apply_chat_template(
                [message], tokenize=True, return_dict=False
            )[2:]
            input_ids += new_input_ids
            loss_masks += [loss_mask_val] * len(new_input_ids)
    else:
        input_ids = list(tokenizer.apply_chat_template(conv, tokenize=True, return_dict=False))
        loss_masks = [False] * len(input_ids)
        last = len(input_ids) - input_ids[::-1].index(tok("<|assistant|>")) - 1
        for j in range(last + 1, len(input_ids)):
            loss_masks[j] = True
    input_ids.append(tok("<|user|>"))
    loss_masks = [False, *loss_masks]
    labels = [t if m else -100 for t, m in zip(input_ids, loss_masks, strict=True)]
    max_length = max_in + max_out + 1
    return input_ids[:max_length], labels[:max_length]


def targets_text(tokenizer: Any, labels: list[int]) -> str:
    text: str = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    return text


@pytest.fixture(scope="module")
def special(tiny_tokenizer: Any) -> SpecialTokens:
    return SpecialTokens.from_tokenizer(tiny_tokenizer)


@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["multi_turn", "tool_call", "single"])
@pytest.mark.parametrize(("max_in", "max_out"), [(512, 512), (8, 8)])
def test_masks_equal_upstream_rules(
    tiny_tokenizer: Any, special: SpecialTokens, conv: Any, combine: bool, max_in: int, max_out: int
) -> None:
    # given the upstream algorithm, when we encode, then ids and labels are identical
    expected_ids, expected_labels = upstream_process_batch(
        tiny_tokenizer, conv, combine, max_in, max_out
    )
    example = encode_train(
        tiny_tokenizer, special, conv, combine=combine, max_length=max_in + max_out + 1
    )
    assert example.input_ids == expected_ids
    assert example.labels == expected_labels
    assert len(example.input_ids) <= max_in + max_out + 1


def test_per_message_targets_every_assistant_turn_with_its_stop_token(
    tiny_tokenizer: Any, special: SpecialTokens
) -> None:
    example = encode_train(tiny_tokenizer, special, MULTI_TURN, combine=False, max_length=1025)
    assert targets_text(tiny_tokenizer, example.labels) == (
        "\n这款红色裙热情大方。<|user|>\n白色裙干净清爽。<|user|>"
    )


def test_combine_targets_only_the_last_turn_without_its_newline(
    tiny_tokenizer: Any, special: SpecialTokens
) -> None:
    example = encode_train(tiny_tokenizer, special, MULTI_TURN, combine=True, max_length=1025)
    assert targets_text(tiny_tokenizer, example.labels) == "白色裙干净清爽。<|user|>"
    assert example.input_ids[:2] == [special.gmask, special.sop]
    assert example.input_ids[-1] == special.user


def test_native_tool_call_trains_the_call_and_stops_at_observation(
    tiny_tokenizer: Any, special: SpecialTokens
) -> None:
    example = encode_train(tiny_tokenizer, special, TOOL_CALL, combine=False, max_length=4096)
    assert targets_text(tiny_tokenizer, example.labels) == (
        'get_weather\n{"city": "\\u5317\\u4eac"}<|observation|>\n北京今天晴。<|user|>'
    )
    rendered = tiny_tokenizer.decode(example.input_ids)
    assert "<|system|>\n你是一个名为 ChatGLM 的人工智能助手" in rendered
    assert "## get_weather" in rendered


def test_truncation_keeps_the_head(tiny_tokenizer: Any, special: SpecialTokens) -> None:
    full = encode_train(tiny_tokenizer, special, MULTI_TURN, combine=False, max_length=10_000)
    cut = encode_train(tiny_tokenizer, special, MULTI_TURN, combine=False, max_length=9)
    assert cut.input_ids == full.input_ids[:9]
    assert cut.labels == full.labels[:9]
    assert cut.truncated and not full.truncated
    assert cut.full_length == len(full.input_ids)


def test_missing_assistant_token_is_a_clear_error(
    tiny_tokenizer: Any, special: SpecialTokens
) -> None:
    with pytest.raises(ValueError, match="assistant message with non-empty content"):
        encode_train(
            tiny_tokenizer,
            special,
            [{"role": "user", "content": "hi"}],
            combine=True,
            max_length=100,
        )


@pytest.mark.parametrize("combine", [True, False])
def test_eval_prompt_never_contains_the_answer(
    tiny_tokenizer: Any, special: SpecialTokens, combine: bool
) -> None:
    examples = encode_eval(
        tiny_tokenizer,
        special,
        MULTI_TURN,
        combine=combine,
        max_input_length=512,
        max_output_length=512,
    )
    assert [e.turn for e in examples] == ([1] if combine else [0, 1])
    last = examples[-1]
    prompt = tiny_tokenizer.decode(last.prompt_ids)
    assert prompt.endswith("换成白色呢？<|assistant|>")
    assert "白色裙干净清爽" not in prompt
    assert tiny_tokenizer.decode(last.target_ids) == "\n白色裙干净清爽。<|user|>"
    if not combine:
        first = tiny_tokenizer.decode(examples[0].prompt_ids)
        assert first.endswith("类型#裙*颜色#红色<|assistant|>")


def test_eval_truncates_prompt_head_and_target(tiny_tokenizer: Any, special: SpecialTokens) -> None:
    (example,) = encode_eval(
        tiny_tokenizer, special, MULTI_TURN, combine=True, max_input_length=5, max_output_length=3
    )
    assert len(example.prompt_ids) == 6
    assert example.prompt_ids[-1] == special.assistant
    assert example.prompt_ids[:2] == [special.gmask, special.sop]
    assert len(example.target_ids) == 3


def test_clean_message_drops_arrow_nones() -> None:
    message = {
        "role": "system",
        "content": None,
        "metadata": None,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"a": {"type": "string"}, "b": None},
                    },
                },
            }
        ],
    }
    cleaned = clean_message(message)
    assert cleaned["content"] == ""
    assert "metadata" not in cleaned
    assert cleaned["tools"][0]["function"]["parameters"]["properties"] == {"a": {"type": "string"}}
    assert "tools" not in clean_message({"role": "user", "content": "x", "tools": None})
