"""A chat request's generation parameters: its token budget in the model's context and the
server's limits, and its sampling fields."""

from __future__ import annotations

from typing import Any

from api.schemas.chat import GenerationFields
from core.errors import PromptTooLong
from core.settings import ChatSettings
from serving.params import GenerationParams

#: New tokens when a request names no ``max_new_tokens`` (less where the context has less room).
DEFAULT_MAX_NEW_TOKENS = 1024


def generation_params(
    prompt_tokens: int,
    model_config: Any,
    fields: GenerationFields,
    limits: ChatSettings,
    *,
    prompt_is: str = "the prompt is",
) -> GenerationParams:
    """The parameters of a request whose prompt has ``prompt_tokens`` tokens; a prompt over the
    limit, or one leaving no room for its new tokens in the model's context, is refused (422)."""
    context = int(getattr(model_config, "max_position_embeddings", 0) or 0) or 1 << 30
    room = min(context - prompt_tokens, limits.max_new_tokens)
    max_new_tokens = fields.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, room)
    if prompt_tokens > limits.max_prompt_tokens or max_new_tokens > room or room < 1:
        raise PromptTooLong(
            f"{prompt_is} {prompt_tokens} tokens (at most {limits.max_prompt_tokens}) and "
            f"{max_new_tokens} more must fit the model's {context}-token context",
            param="messages",
        )
    stop = (fields.stop,) if isinstance(fields.stop, str) else tuple(fields.stop or ())
    return GenerationParams(
        max_new_tokens=max_new_tokens,
        temperature=fields.temperature,
        top_p=fields.top_p,
        repetition_penalty=fields.repetition_penalty,
        stop=stop,
        seed=fields.seed,
    )
