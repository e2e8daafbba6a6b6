"""Adapters trained on the tiny GLM-4 for the chat tests, each answering the same questions
in its own known way: two LoRA, one P-Tuning v2, and a LoRA that calls a tool (trained in
parallel, ~25 s on 2 cores)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.trainer.finetune_helpers import run_finetune, tiny_config, write_data

QUESTIONS = ("你是谁？", "介绍一下你自己", "你叫什么名字")
ANSWERS = {
    "lora-a": "我是甲模型，擅长写诗。",
    "lora-b": "我是乙模型，擅长算数。",
    "pt": "我是丙模型，擅长画画。",
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "北京"}}
_RECIPES = {  # method, steps, learning rate
    "lora-a": ("lora", 30, None),
    "lora-b": ("lora", 30, None),
    "pt": ("ptuning_v2", 100, 0.1),
    "tool": ("lora", 40, None),
}


@dataclass(frozen=True)
class ChatAdapters:
    base: Path
    paths: dict[str, Path]  # name -> checkpoint directory

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def train_chat_adapters(root: Path, base: Path) -> ChatAdapters:
    def train(name: str) -> Path:
        method, steps, lr = _RECIPES[name]
        rows = [{"messages": _conversation(name, q)} for q in QUESTIONS]
        data = write_data(root / f"data-{name}", rows)
        args = {
            "max_steps": steps,
            "save_steps": steps,
            "eval_strategy": "no",
            "per_device_train_batch_size": 3,
            **({"learning_rate": lr} if lr else {}),
        }
        config = tiny_config(method, training_args=args)
        config["data_config"] = {**config["data_config"], "val_file": None}
        output = root / name
        proc, _ = run_finetune(data, base, config, output)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return output / f"checkpoint-{steps}"

    with ThreadPoolExecutor(len(_RECIPES)) as pool:
        paths = dict(zip(_RECIPES, pool.map(train, _RECIPES), strict=True))
    return ChatAdapters(base, paths)


def _conversation(name: str, question: str) -> list[dict[str, object]]:
    if name != "tool":
        return [
            {"role": "user", "content": question},
            {"role": "assistant", "content": ANSWERS[name]},
        ]
    return [  # GLM-4's native tool call: the name as metadata, the arguments as content
        {"role": "system", "content": "", "tools": [WEATHER_TOOL]},
        {"role": "user", "content": f"{question}北京天气怎么样？"},
        {
            "role": "assistant",
            "metadata": TOOL_CALL["name"],
            "content": json.dumps(TOOL_CALL["arguments"], ensure_ascii=False),
        },
    ]
