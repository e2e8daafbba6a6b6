"""GLM-4 chat template rendering, loss masks and eval prompts (glm4-reference.md §1.4, §1.5, §7).

Rendering always goes through the tokenizer's own ``chat_template``; special tokens are looked up
by their strings, never as literal ids, so the same code serves the real glm-4-9b-chat tokenizer
and the tiny test tokenizer.

Training targets (``labels``) follow the upstream demo exactly:

* ``combine=False`` (per message): every message is rendered on its own and appended after
  ``[gMASK]<sop>``; a token is a target iff the token before it belongs to an assistant segment,
  so all assistant turns are trained, including the "\\n" after ``<|assistant|>`` and the role token
  that ends the turn.
* ``combine=True`` (the yaml default): the whole conversation is rendered at once and only the last
  assistant turn is trained, from two tokens after the last ``<|assistant|>``.

Both append ``<|user|>`` as the end-of-turn token and truncate the head-kept sequence to
``max_input_length + max_output_length + 1``.

Eval samples fix the upstream combine-mode leak: the prompt ends with ``<|assistant|>`` and never
contains the answer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

IGNORE_INDEX = -100

Message = dict[str, Any]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the GLM-4 control tokens, resolved from a tokenizer."""

    gmask: int
    sop: int
    user: int
    assistant: int
    observation: int
    endoftext: int

    @classmethod
    def from_tokenizer(cls, tokenizer: ChatTokenizer) -> SpecialTokens:
        names = {
            "gmask": "[gMASK]",
            "sop": "<sop>",
            "user": "<|user|>",
            "assistant": "<|assistant|>",
            "observation": "<|observation|>",
            "endoftext": "<|endoftext|>",
        }
        ids: dict[str, int] = {}
        unk = getattr(tokenizer, "unk_token_id", None)
        for field, token in names.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id == unk:
                raise ValueError(f"tokenizer has no special token {token!r}: not a GLM-4 tokenizer")
            ids[field] = token_id
        return cls(**ids)

    @property
    def eos_ids(self) -> list[int]:
        """The generation stop set: ``<|endoftext|>``, ``<|user|>``, ``<|observation|>``."""
        return [self.endoftext, self.user, self.observation]


@dataclass(frozen=True)
class TrainExample:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # length before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


@dataclass(frozen=True)
class EvalExample:
    turn: int  # index of the assistant turn in the conversation (0-based among assistant turns)
    prompt_ids: list[int]
    target_ids: list[int]


def clean_message(message: Message) -> Message:
    """Normalise a message as the demo's ``process_message`` does (§1.4, §7.5).

    Drops ``None``-valued tool parameter properties and ``tools``/``metadata`` keys that are
    ``None`` (which the template would otherwise render as the string "None").
    """
    msg = {k: v for k, v in message.items() if v is not None or k == "content"}
    if msg.get("role") != "system":
        msg.pop("tools", None)
    elif msg.get("tools"):
        tools = copy.deepcopy(msg["tools"])
        for tool in tools:
            params = (tool.get("function") or {}).get("parameters") or {}
            props = params.get("properties")
            if isinstance(props, dict):
                params["properties"] = {k: v for k, v in props.items() if v is not None}
        msg["tools"] = tools
    if msg.get("content") is None:
        msg["content"] = ""
    return msg


def render_ids(
    tokenizer: ChatTokenizer, messages: list[Message], *, generation_prompt: bool = False
) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template."""
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)


def _message_segment(tokenizer: ChatTokenizer, message: Message) -> list[int]:
    # apply_chat_template adds "[gMASK]<sop>" to every call: strip it (the demo's ``[2:]``).
    return render_ids(tokenizer, [message])[2:]


def encode_train(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    messages: list[Message],
    *,
    combine: bool,
    max_length: int,
) -> TrainExample:
    """``input_ids`` and shifted ``labels`` for one conversation (the demo's ``process_batch``)."""
    if combine:
        ids = render_ids(tokenizer, [clean_message(m) for m in messages])
        last = _last_index(ids, special.assistant)
        mask = [j > last for j in range(len(ids))]
    else:
        ids = [special.gmask, special.sop]
        mask = [False, False]
        for message in messages:
            segment = _message_segment(tokenizer, clean_message(message))
            ids += segment
            mask += [message["role"] == "assistant"] * len(segment)
    ids.append(special.user)
    shifted = [False, *mask]
    labels = [tok if target else IGNORE_INDEX for tok, target in zip(ids, shifted, strict=True)]
    return TrainExample(
        input_ids=ids[:max_length], labels=labels[:max_length], full_length=len(ids)
    )


def encode_eval(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    messages: list[Message],
    *,
    combine: bool,
    max_input_length: int,
    max_output_length: int,
) -> list[EvalExample]:
    """Prompts and targets for generation-based eval (the demo's ``process_batch_eval``, fixed).

    Each prompt is the context before an assistant turn, head-truncated to ``max_input_length``,
    followed by ``<|assistant|>``; its target is the turn after that token plus ``<|user|>``,
    truncated to ``max_output_length``. ``combine=True`` evaluates only the last assistant turn.
    """
    context = [special.gmask, special.sop]
    turns: list[tuple[list[int], list[int]]] = []
    for message in messages:
        segment = _message_segment(tokenizer, clean_message(message))
        if message["role"] == "assistant" and segment:
            turns.append((list(context), segment[1:]))
        context += segment
    if combine:
        turns = turns[-1:]
    first_turn = _count_assistant_turns(messages) - len(turns)
    return [
        EvalExample(
            turn=first_turn + i,
            prompt_ids=[*prompt[:max_input_length], special.assistant],
            target_ids=[*answer, special.user][:max_output_length],
        )
        for i, (prompt, answer) in enumerate(turns)
    ]


def _count_assistant_turns(messages: list[Message]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant" and m.get("content"))


def _last_index(ids: list[int], token: int) -> int:
    for j in range(len(ids) - 1, -1, -1):
        if ids[j] == token:
            return j
    raise ValueError(
        "conversation renders no <|assistant|> token: it needs an assistant message "
        "with non-empty content"
    )
