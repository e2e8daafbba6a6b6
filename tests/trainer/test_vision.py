"""Vision fine-tuning in the trainer: the tiny GLM-4V, image placeholders and loss masks, the
collator, LoRA on the language model (and on the vision tower with ``freezeV: false``), the
config rules, and remote code only when trusted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.vision_data import colour_files
from trainer.commands import tiny_model
from trainer.config import ConfigError, parse_config
from trainer.data import DataError
from trainer.finetune import main as finetune_main
from trainer.modeling import UnsupportedModelError, attach_method, check_model_dir, load_model
from trainer.template import IGNORE_INDEX, SpecialTokens, encode_train
from trainer.vision import vision_config_issues
from trainer.vision_data import (
    ImageTokens,
    VisionCollator,
    VisionDataset,
    native_messages,
    vision_train_features,
)

REPO = Path(__file__).resolve().parents[2]


def _data_dir(tmp_path: Path) -> Path:
    for name, content in colour_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    return tmp_path


def _config(**changes: Any) -> Any:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load((REPO / "configs" / "tiny" / "lora.yaml").read_text())
    for key, value in changes.items():
        data[key] = value
    return parse_config(data)


@pytest.fixture(scope="module")
def assets(tiny_vision_model_dir: Path) -> tuple[Any, SpecialTokens, ImageTokens]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_vision_model_dir, padding_side="left")
    return (
        tokenizer,
        SpecialTokens.from_tokenizer(tokenizer),
        ImageTokens.load(tiny_vision_model_dir, tokenizer),
    )


def test_tiny_model_command_writes_a_loadable_vision_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    tiny_model.add_arguments(parser)
    assert tiny_model.run(parser.parse_args([str(tmp_path / "m"), "--vision"])) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["Glm4vForConditionalGeneration"]
    assert (tmp_path / "m" / "preprocessor_config.json").is_file()
    model = load_model(tmp_path / "m", dtype=torch.float32)
    assert type(model).__name__ == "Glm4vForConditionalGeneration"


def test_image_placeholders_follow_the_processor_and_are_never_targets(
    tmp_path: Path, assets: tuple[Any, SpecialTokens, ImageTokens]
) -> None:
    tokenizer, special, tokens = assets
    data = _data_dir(tmp_path)
    rows = vision_train_features(
        tokenizer, special, tokens, data / "train.jsonl", combine=False, max_length=512
    )
    row = rows[0]
    pixels = VisionDataset(rows, tokens)[0]
    expected = int(pixels["image_grid_thw"].prod()) // tokens.merge
    placed = [i for i, t in enumerate(row["input_ids"]) if t == tokens.image_token]
    assert len(placed) == expected == pixels["pixel_values"].shape[0] // tokens.merge
    assert placed == list(range(placed[0], placed[0] + expected))  # one contiguous run
    assert all(row["labels"][i] == IGNORE_INDEX for i in placed)
    # after the image the ids and targets are the text path's, shifted by the extra tokens
    text, _ = native_messages(
        json.loads((data / "train.jsonl").read_text().splitlines()[0])["messages"]
    )
    plain = encode_train(tokenizer, special, text, combine=False, max_length=512)
    assert row["labels"][placed[-1] + 1 :] == plain.labels[placed[0] + 1 :]
    with pytest.raises(DataError, match="do not fit"):
        vision_train_features(
            tokenizer, special, tokens, data / "train.jsonl", combine=False, max_length=placed[1]
        )


def test_collator_keeps_images_with_their_rows(
    tmp_path: Path, assets: tuple[Any, SpecialTokens, ImageTokens]
) -> None:
    tokenizer, special, tokens = assets
    data = _data_dir(tmp_path)
    rows = vision_train_features(
        tokenizer, special, tokens, data / "train.jsonl", combine=True, max_length=512
    )
    text_row = {"input_ids": rows[0]["input_ids"][-5:], "labels": rows[0]["labels"][-5:]}
    dataset = VisionDataset([rows[0], {**text_row, "image": None}, rows[1]], tokens)
    batch = VisionCollator(special.endoftext, tokens.image_token)([dataset[i] for i in range(3)])
    per_row = batch["mm_token_type_ids"].sum(dim=1).tolist()
    assert per_row[1] == 0 and per_row[0] > 0 and per_row[2] > 0
    grids = batch["image_grid_thw"]
    assert grids.shape == (2, 3)
    assert batch["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert per_row[0] == int(grids[0].prod()) // tokens.merge


def _lora_modules(model: Any) -> set[str]:
    return {name for name, _ in model.named_modules() if name.endswith(".lora_A")}


def test_lora_targets_the_language_model_unless_freezev_is_off(tiny_vision_model_dir: Path) -> None:
    targets = ["q_proj", "v_proj", "qkv", "down_proj"]
    peft = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": targets}
    frozen = attach_method(
        load_model(tiny_vision_model_dir, dtype=torch.float32),
        _config(peft_config=peft, freezeV=True),
    )
    assert _lora_modules(frozen) and not any(".visual." in m for m in _lora_modules(frozen))
    both = attach_method(
        load_model(tiny_vision_model_dir, dtype=torch.float32),
        _config(peft_config=peft, freezeV=False),
    )
    assert any(".visual." in m and ".qkv." in m for m in _lora_modules(both))
    sft = attach_method(
        load_model(tiny_vision_model_dir, dtype=torch.float32),
        _config(peft_config=None, freezeV=True),
    )
    visual = [p.requires_grad for n, p in sft.named_parameters() if ".visual." in n]
    assert visual and not any(visual)


def test_what_vision_runs_refuse() -> None:
    issues = vision_config_issues(_config(packing=True, chunked_loss=True))
    assert {i.key for i in issues} == {"packing", "chunked_loss"}
    prefix = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}
    assert [i.key for i in vision_config_issues(_config(peft_config=prefix))] == [
        "peft_config.peft_type"
    ]
    assert vision_config_issues(_config()) == []
    with pytest.raises(ConfigError):
        parse_config({"trust_remote_code": True})


def test_remote_code_loads_only_when_trusted(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "auto_map": {}}))
    with pytest.raises(UnsupportedModelError, match="operator trust"):
        check_model_dir(tmp_path)
    assert check_model_dir(tmp_path, trust_remote_code=True)["model_type"] == "chatglm"


def test_vision_lora_run_with_the_tower_trained_too(
    tmp_path: Path, tiny_vision_model_dir: Path
) -> None:
    config = (REPO / "configs" / "tiny" / "lora.yaml").read_text()
    config = config.replace("freezeV: True", "freezeV: False").replace(
        '"down_proj"]', '"down_proj", "qkv"]'
    )
    config = config.replace("max_steps: 150", "max_steps: 2").replace(
        "save_steps: 75", "save_steps: 2"
    )
    (tmp_path / "vision.yaml").write_text(
        config.replace("eval_strategy: steps", "eval_strategy: 'no'")
    )
    data, out = _data_dir(tmp_path / "data"), tmp_path / "out"
    argv = [
        str(data),
        str(tiny_vision_model_dir),
        str(tmp_path / "vision.yaml"),
        "--output-dir",
        str(out),
    ]
    assert finetune_main(argv) == 0
    weights = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert any(".visual." in key for key in weights)
    assert any(".language_model." in key for key in weights)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1]["status"] == "succeeded"
