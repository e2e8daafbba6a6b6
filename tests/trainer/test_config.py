"""Configs: the upstream yaml files load unchanged; every mistake names its key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.finetune_helpers import REPO, TINY_CONFIGS
from trainer import hf_fields
from trainer.config import ConfigError, load_config, load_yaml, parse_config, resolve_config_path

UPSTREAM = REPO / "configs"


@pytest.mark.parametrize(
    ("name", "method", "lr"),
    [
        ("lora.yaml", "lora", 5e-4),
        ("ptuning_v2.yaml", "ptuning_v2", 5e-4),
        ("sft.yaml", "sft", 5e-5),
    ],
)
def test_upstream_configs_load_with_upstream_values(name: str, method: str, lr: float) -> None:
    config = load_config(UPSTREAM / name)
    assert config.method == method
    assert config.training_args["learning_rate"] == lr  # YAML 1.2: 5e-4 is a float
    assert isinstance(config.training_args["learning_rate"], float)
    assert config.max_length == 1025 and config.combine is True
    assert config.training_args["max_steps"] == 3000
    assert config.generation_config == {"max_new_tokens": 512}


def test_upstream_peft_settings() -> None:
    lora = load_config(UPSTREAM / "lora.yaml").peft_config
    assert lora == {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 32,
        "lora_dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj"],
    }
    prefix = load_config(UPSTREAM / "ptuning_v2.yaml").peft_config
    assert prefix is not None
    assert (prefix["num_virtual_tokens"], prefix["num_attention_heads"], prefix["token_dim"]) == (
        512,
        2,
        256,
    )
    assert load_config(UPSTREAM / "sft.yaml").training_args["deepspeed"] == (
        "configs/ds_zero_3.json"
    )


def test_deepspeed_configs_have_upstream_stages() -> None:
    zero2 = json.loads((UPSTREAM / "ds_zero_2.json").read_text())
    zero3 = json.loads((UPSTREAM / "ds_zero_3.json").read_text())
    assert zero2["zero_optimization"]["stage"] == 2
    assert zero3["zero_optimization"]["stage"] == 3
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["optimizer"]["type"] == "AdamW"


@pytest.mark.parametrize("path", sorted(TINY_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_tiny_presets_load(path: Path) -> None:
    assert load_config(path).training_args["max_steps"] > 0


def base() -> dict[str, Any]:
    text = (UPSTREAM / "lora.yaml").read_text()
    data: dict[str, Any] = load_yaml(text)
    return data


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [str(issue) for issue in info.value.issues]


def test_unknown_keys_are_named() -> None:
    data = base()
    data["combined"] = True
    data["training_args"]["learning_rat"] = 1e-3
    data["peft_config"]["rank"] = 8
    data["data_config"]["train"] = "x.jsonl"
    assert sorted(errors_of(data)) == sorted(
        [
            "combined: unknown key",
            "training_args.learning_rat: unknown key",
            "peft_config.rank: unknown key",
            "data_config.train: unknown key",
        ]
    )


def test_missing_required_keys_are_named() -> None:
    data = base()
    del data["max_input_length"]
    del data["combine"]
    assert sorted(errors_of(data)) == [
        "combine: required key is missing",
        "max_input_length: required key is missing",
    ]


def test_wrong_types_are_named() -> None:
    data = base()
    data["max_output_length"] = "512"
    data["training_args"]["learning_rate"] = "5e-4"
    data["training_args"]["per_device_train_batch_size"] = 1.5
    data["peft_config"]["r"] = "8"
    found = errors_of(data)
    assert any(e.startswith("max_output_length: ") for e in found)
    assert "training_args.learning_rate: expected float or int, got str '5e-4'" in found
    assert any(
        e.startswith("training_args.per_device_train_batch_size: expected int") for e in found
    )
    assert any(e.startswith("peft_config.r: expected int") for e in found)


def test_reserved_and_unsupported_settings() -> None:
    data = base()
    data["training_args"]["use_cpu"] = True
    data["peft_config"]["peft_type"] = "IA3"
    assert errors_of(data) == [
        "training_args.use_cpu: is set by glmft and cannot be configured",
        "peft_config.peft_type: must be one of LORA, PREFIX_TUNING, got 'IA3'",
    ]


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("training_args: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_deepspeed_path_resolves_from_cwd_or_config_dir(tmp_path: Path) -> None:
    resolved = resolve_config_path("configs/ds_zero_3.json", UPSTREAM / "sft.yaml")
    assert resolved == (UPSTREAM / "ds_zero_3.json").resolve()
    with pytest.raises(ConfigError, match=r"training_args\.deepspeed: file not found"):
        resolve_config_path("nope.json", tmp_path / "x.yaml")


def test_field_tables_match_the_installed_transformers_and_peft() -> None:
    assert hf_fields.generate() == hf_fields.load()


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, trainer.config, trainer.validation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
