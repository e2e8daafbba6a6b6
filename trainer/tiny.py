"""Build a tiny, random GLM-4 chat model and tokenizer offline, for tests and demos.

The model is transformers' native ``GlmForCausalLM`` (``model_type: "glm"``, the layout of
``glm-4-9b-chat-hf``) with a few thousand parameters per layer. The tokenizer is a small byte-level
BPE trained in-process on a synthetic corpus, but it mirrors glm-4-9b-chat where code can notice:

* the same pre-tokenization split regex and byte-level encoding (glm4-reference.md §5);
* the 14 special tokens, in upstream order, appended after the regular vocabulary;
* plain ``encode`` prepends ``[gMASK]<sop>``; the chat template renders byte-for-byte as the
  model's own ``chat_template`` (``trainer/assets/glm4_chat_template.jinja``);
* ``eos_token`` = ``pad_token`` = ``<|endoftext|>`` and left padding.

Token ids are always taken from the tokenizer; nothing here hard-codes upstream ids.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import GenerationConfig, GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CHAT_TEMPLATE_PATH = ASSETS_DIR / "glm4_chat_template.jinja"
DEMO_DIR = ASSETS_DIR / "demo"

#: glm-4-9b-chat's special tokens, in id order; upstream they follow the 151329 regular tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)
#: Tokens that end generation (the upstream ``eos_token_id`` list), by string.
STOP_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|user|>", "<|observation|>")
#: glm-4-9b-chat's tiktoken split pattern (tokenization_chatglm.py).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MODEL_MAX_LENGTH = 8192
MAX_POSITION_EMBEDDINGS = 4096
_CORPUS_SEED = 1234  # the tokenizer does not depend on the model seed

_ZH_ITEMS = ("裙子", "连衣裙", "衬衫", "外套", "牛仔裤", "卫衣", "半身裙", "T恤", "毛衣", "风衣")
_ZH_ATTRS = (
    *("类型#裙", "版型#显瘦", "颜色#白色", "颜色#黑色", "风格#简约", "风格#复古", "图案#条纹"),
    *("材质#棉", "材质#雪纺", "裙长#连衣裙", "领型#圆领", "袖长#短袖", "季节#夏天", "风格#清新"),
)
_ZH_PHRASES = (
    "这款{item}采用了{mat}面料，穿着舒适透气，{style}的设计让你在{season}也能保持好心情。",
    "{item}的版型非常修身，能够很好地修饰身材，搭配一双小白鞋就很好看。",
    "简约大方的{item}，适合日常通勤，也适合周末出游，是衣橱里必不可少的单品。",
    "北京有什么好吃的？烤鸭、炸酱面和豆汁儿都很有名。",
    "今天天气怎么样？明天{city}的气温是{num}度，建议带伞。",
    "你是一个乐于助人的助手，请用中文回答用户的问题。",
    "我们的模型支持微调、推理和部署，欢迎使用。",
)
_EN_PHRASES = (
    "This {adj} dress is made of soft cotton and fits perfectly for summer days.",
    "The weather in {city} will be {adj} tomorrow, with a high of {num} degrees.",
    "Fine-tuning a language model with LoRA only trains a small number of parameters.",
    "Please answer the user's question briefly and politely. I'm sure we'll find it.",
    "What's the best way to learn machine learning? Start with the basics, then practice.",
    "The quick brown fox jumps over the lazy dog {num} times.",
)
_ADJS = ("simple", "classic", "elegant", "casual", "sunny", "rainy", "cool", "warm")
_CITIES = ("北京", "上海", "深圳", "杭州", "Beijing", "Shanghai", "London", "Paris")
_CODE = (
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "for i in range(10):\n    print(i * {num})\n",
    'import json\nprint(json.dumps({{"ok": true, "n": {num}}}, ensure_ascii=False))\n',
    'if __name__ == "__main__":\n    main()\n',
    "SELECT name, price FROM items WHERE price > {num} ORDER BY price DESC;\n",
)


def load_chat_template() -> str:
    """Return glm-4-9b-chat's jinja chat template, exactly as upstream ships it."""
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def _tool_json(rng: random.Random) -> str:
    city = rng.choice(_CITIES)
    return (
        '{\n    "name": "get_weather",\n    "description": "查询指定城市的天气",\n'
        '    "parameters": {\n        "type": "object",\n        "properties": {\n'
        '            "city": {\n                "type": "string",\n'
        '                "description": "城市名称"\n            }\n        },\n'
        '        "required": [\n            "city"\n        ]\n    }\n}\n'
        f'get_weather\n{{"city": "{city}"}}\n{{"city": "{city}", "temperature": '
        f'{rng.randint(-10, 40)}, "weather": "晴"}}\n'
    )


def synthetic_corpus(n_lines: int = 2000, *, seed: int = _CORPUS_SEED) -> list[str]:
    """Mixed Chinese/English ad copy, chat lines, tool JSON, code and digits (deterministic)."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_lines):
        num = rng.randint(0, 99999)
        fill: dict[str, object] = {
            "item": rng.choice(_ZH_ITEMS),
            "mat": rng.choice(("棉", "雪纺", "真丝", "亚麻")),
            "style": rng.choice(("简约", "复古", "清新", "优雅")),
            "season": rng.choice(("夏天", "冬天")),
            "city": rng.choice(_CITIES),
            "num": num,
            "adj": rng.choice(_ADJS),
        }
        kind = i % 6
        if kind == 0:
            attrs = rng.sample(_ZH_ATTRS, k=rng.randint(2, 5))
            lines.append("*".join(attrs) + "\n" + rng.choice(_ZH_PHRASES).format(**fill))
        elif kind == 1:
            lines.append(rng.choice(_ZH_PHRASES).format(**fill))
        elif kind == 2:
            lines.append(rng.choice(_EN_PHRASES).format(**fill))
        elif kind == 3:
            lines.append(rng.choice(_CODE).format(**fill))
        elif kind == 4:
            lines.append(_tool_json(rng))
        else:
            digits = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 8))) for _ in range(6))
            lines.append(f"{digits}, {num / 7:.3f}%  ¥{num} #{fill['item']}#")
    return lines


def _demo_texts() -> Iterator[str]:
    if DEMO_DIR.is_dir():
        for path in sorted(p for p in DEMO_DIR.rglob("*") if p.is_file()):
            try:
                yield path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                logger.debug("skipping non-text demo asset %s", path)


def build_tokenizer(*, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE and wrap it like glm-4-9b-chat-hf's tokenizer.

    ``vocab_size`` counts the regular (BPE) tokens; the 14 specials follow them.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [*synthetic_corpus(), load_chat_template(), *_demo_texts()]
    tok.train_from_iterator(corpus, trainer=trainer)
    n_regular = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if list(ids.values()) != list(range(n_regular, n_regular + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens did not follow the {n_regular} regular ones: {ids}")
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A:0",
        pair="[gMASK] <sop> $A:0 $B:1",
        special_tokens=[("[gMASK]", ids["[gMASK]"]), ("<sop>", ids["<sop>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS),
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=load_chat_template(),
    )


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar for a one-shard save."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of ``token``, which must be a single known token of ``tokenizer``."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise KeyError(f"{token!r} is not a token of this tokenizer")
    return found


def build_config(
    tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 64, layers: int = 2
) -> GlmConfig:
    """A glm-4-9b-chat-shaped ``GlmConfig`` scaled down to ``hidden_size`` and ``layers``."""
    if hidden_size <= 0 or hidden_size % 16:  # 4 heads, rotary half of each head, in pairs
        raise ValueError(f"hidden_size must be a positive multiple of 16, got {hidden_size}")
    if layers <= 0:
        raise ValueError(f"layers must be positive, got {layers}")
    pad_id = token_id(tokenizer, "<|endoftext|>")
    eos_ids = [token_id(tokenizer, t) for t in STOP_TOKENS]
    return GlmConfig(
        vocab_size=_round_up(len(tokenizer), 64),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
        attention_bias=True,
        tie_word_embeddings=False,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        bos_token_id=None,
    )


# Logit range a trained head reaches: with the default init (std 0.02) a frozen head caps every
# logit margin near 0.02 * hidden_size, so LoRA / P-Tuning v2 (which keep the head frozen) plateau
# near the uniform loss no matter what they learn. A real pretrained head has no such cap.
_HEAD_LOGIT_SCALE = 16.0


def chat_generation_config(eos_token_id: int | list[int], pad_token_id: int) -> GenerationConfig:
    """GLM-4-9B-Chat's own sampling defaults, saved with a tiny model."""
    return GenerationConfig(
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        do_sample=True,
        top_p=0.8,
        temperature=0.8,
        repetition_penalty=1.2,
    )


def _scale_output_head(model: GlmForCausalLM) -> None:
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, _HEAD_LOGIT_SCALE / model.config.hidden_size)


def build_tiny_model(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    vocab_size: int = 2000,
) -> Path:
    """Write a random tiny ``GlmForCausalLM`` plus its tokenizer to ``out_dir`` and return it.

    The same arguments always give the same files. Existing files of the same names are replaced.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    config = build_config(tokenizer, hidden_size=hidden_size, layers=layers)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = GlmForCausalLM(config).eval()
        _scale_output_head(model)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = chat_generation_config(config.eos_token_id, config.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "tiny GLM-4 written to %s (%d params, vocab %d/%d, hidden %d, layers %d, seed %d)",
        out_dir,
        n_params,
        len(tokenizer),
        config.vocab_size,
        hidden_size,
        layers,
        seed,
    )
    return out_dir
