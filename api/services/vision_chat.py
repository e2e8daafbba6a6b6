"""Images in chat requests: where they may be, how they are decoded, and the prompt of a request
for a vision model (:class:`serving.vision.VisionEngine`).

A request carries an image as an OpenAI ``image_url`` content part (``{"type": "image_url",
"image_url": {"url": "data:image/png;base64,..."}}``) or, in GLM-4's own format, as ``image`` on
a message holding the same ``data:`` URL. glmft never fetches a URL: any other URL is refused
(422), so a request can never make the server contact another host or read its files. As in
upstream's GLM-4V data, a conversation has at most one image, on its first message; it is
decoded with the header checks of :mod:`trainer.images` and the ``max_image_pixels`` bound.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

from api.schemas.chat import GenerationFields
from api.services.chat_params import generation_params
from core.errors import InvalidMessages
from core.settings import Settings
from serving.params import GenerationParams
from serving.vision import VisionEngine, VisionPrompt
from trainer.images import ImageError, open_rgb
from trainer.template import clean_message, render_ids
from trainer.validation import validate_conversation
from trainer.validation_codes import Code
from trainer.vision_data import native_messages

#: Decoded bytes one image may have (before the pixel bound applies).
MAX_IMAGE_BYTES = 20 * 1024**2
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.IGNORECASE)
_TRAINING_ONLY = {Code.NO_ASSISTANT_CONTENT.value}


def with_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GLM-4 messages whose content parts are flattened to text, each ``image_url`` part
    moved to the message's ``image`` (its URL); other messages as they are."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        texts, urls = [], []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                url = part.get("image_url")
                urls.append(url.get("url") if isinstance(url, dict) else url)
            else:
                raise InvalidMessages(
                    f"messages[{i}].content[{j}]: only text and image_url parts are supported",
                    param=f"messages[{i}].content[{j}]",
                )
        flat = {**message, "content": "".join(texts)}
        if len(urls) > 1:
            raise InvalidMessages(
                f"messages[{i}]: one image per conversation (GLM-4V's format)",
                param=f"messages[{i}].content",
            )
        if urls:
            flat["image"] = urls[0]
        out.append(flat)
    return out


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any("image" in m or isinstance(m.get("content"), list) for m in messages)


def decode_image(url: Any, param: str, *, max_pixels: int) -> Any:
    """The RGB image of a ``data:`` URL; any other URL or bad data is a 422."""
    if not isinstance(url, str) or not _DATA_URL.match(url):
        raise InvalidMessages(
            "images must be sent inline as data: URLs (data:image/png;base64,...); glmft "
            "never fetches a URL",
            param=param,
        )
    encoded = url.split(",", 1)[1]
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidMessages(f"the image is larger than {MAX_IMAGE_BYTES} bytes", param=param)
    try:
        data = base64.b64decode(encoded, validate=True)
        return open_rgb(io.BytesIO(data), name="the image", max_pixels=max_pixels)
    except (binascii.Error, ValueError) as exc:
        message = str(exc) if isinstance(exc, ImageError) else f"invalid base64 data ({exc})"
        raise InvalidMessages(f"{param}: {message}", param=param) from exc


def prepare_vision(
    settings: Settings,
    engine: VisionEngine,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    fields: GenerationFields,
) -> tuple[VisionPrompt, GenerationParams, set[str]]:
    """The prompt (image included), sampling parameters and tool names of a vision request."""
    limits = settings.chat
    if tools:
        raise InvalidMessages("vision models take no tools (GLM-4V's format)", param="tools")
    if len(messages) > limits.max_messages:
        raise InvalidMessages(
            f"{len(messages)} messages; at most {limits.max_messages}", param="messages"
        )
    messages = with_images(messages)
    _check(messages)
    native, url = native_messages(messages)
    image = None
    if url is not None:
        image = decode_image(url, "messages[0].image", max_pixels=settings.limits.max_image_pixels)
    ids = render_ids(engine.tokenizer, [clean_message(m) for m in native], generation_prompt=True)
    prompt = engine.prompt(ids, image)
    params = generation_params(
        len(prompt), engine.config, fields, limits, prompt_is="the prompt, its image included, is"
    )
    return prompt, params, set()


def _check(messages: list[dict[str, Any]]) -> None:
    """The GLM-4V data rules that apply to a prompt, and a last user turn to answer."""
    errors, _ = validate_conversation({"messages": messages}, vision=True)
    issues = [
        {"path": i.path, "code": i.code, "message": i.message}
        for i in errors
        if i.code not in _TRAINING_ONLY
    ]
    if messages and messages[-1].get("role") != "user":
        issues.append(
            {
                "path": f"messages[{len(messages) - 1}]",
                "code": "no_turn_to_answer",
                "message": "the last message must be the user's",
            }
        )
    if issues:
        first = issues[0]
        raise InvalidMessages(
            f"{first['path']}: {first['message']}", param=first["path"], details={"issues": issues}
        )
