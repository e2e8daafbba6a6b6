"""Configs fitted to the base model (``trainer.model_fit``): the upstream demo's remote-code LoRA
target read as the native projections, unknown targets refused with what to write, and P-Tuning
v2's prefix shape taken from the model, on every tiny base the project builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.finetune_helpers import (
    REPO,
    final_status,
    glmft_in_process,
    tiny_config,
    train_only_config,
    write_data,
)
from trainer.config import ConfigError, load_config, parse_config
from trainer.contract.events import read_events
from trainer.model_fit import ModelShape, fit_peft_config

#: glm-4-9b-chat-hf's config.json, the fields the checks read
GLM4_9B = {"num_attention_heads": 32, "num_key_value_heads": 2, "hidden_size": 4096}
GLM4_9B_SHAPE = ModelShape.from_config({**GLM4_9B, "head_dim": 128, "num_hidden_layers": 40})
UPSTREAM_LORA = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 32}


def _lora(targets: Any) -> dict[str, Any]:
    return {**UPSTREAM_LORA, "target_modules": targets}


def test_upstream_prefix_shape_fits_the_9b_model_and_a_wrong_one_says_the_right_one() -> None:
    upstream = load_config(REPO / "configs" / "ptuning_v2.yaml").peft_config
    assert fit_peft_config(upstream, GLM4_9B_SHAPE).issues == []
    wrong = fit_peft_config({**(upstream or {}), "token_dim": 32}, GLM4_9B_SHAPE)
    assert [str(i) for i in wrong.issues] == [
        "peft_config.token_dim: must be KV heads x head_dim = 2 x 128 = 256 for this model, "
        "got 32 (or leave it out: it defaults to the model's)"
    ]


@pytest.mark.parametrize(
    ("targets", "fitted", "noted"),
    [
        (["query_key_value"], ["q_proj", "k_proj", "v_proj"], True),
        (["query_key_value", "o_proj", "q_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"], True),
        (["self_attn.q_proj", "down_proj"], ["self_attn.q_proj", "down_proj"], False),
        ("all-linear", "all-linear", False),
        (r".*\.(q|v)_proj", r".*\.(q|v)_proj", False),
    ],
)
def test_lora_targets_read_as_native_module_names(targets: Any, fitted: Any, noted: bool) -> None:
    result = fit_peft_config(_lora(targets), GLM4_9B_SHAPE)
    assert result.issues == [] and result.peft_config is not None
    assert result.peft_config["target_modules"] == fitted
    assert bool(result.notes) == noted


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        (["dense_h_to_4h"], "remote-code ChatGLM name: write gate_up_proj"),
        (["qkv_proj"], "'qkv_proj' is not a module of this GLM-4 model"),
        ("nothing_matches", "'nothing_matches' is not a module"),
        ("(", "not a valid regular expression"),
    ],
)
def test_unknown_lora_targets_say_what_to_write(targets: Any, says: str) -> None:
    (issue,) = fit_peft_config(_lora(targets), GLM4_9B_SHAPE).issues
    assert issue.key == "peft_config.target_modules" and says in issue.message
    if "not a module" in issue.message:
        assert "q_proj, k_proj, v_proj, o_proj, gate_up_proj, down_proj" in issue.message


def test_the_upstream_lora_target_trains_the_native_projections(tiny_model_dir: Path) -> None:
    from trainer.modeling import attach_method, compute_dtype, load_model

    config = parse_config(tiny_config("lora", peft_config=_lora(["query_key_value"])))
    model = attach_method(load_model(tiny_model_dir, dtype=compute_dtype()), config)
    adapted = {
        name.split(".lora_A.")[0].rsplit(".", 1)[-1]
        for name, _ in model.named_parameters()
        if ".lora_A." in name
    }
    assert adapted == {"q_proj", "k_proj", "v_proj"}


def test_the_tiny_prefix_preset_fits_the_service_tiny_base(tmp_path: Path) -> None:
    # glmft up builds its tiny base with hidden size 128: head_dim 32, token_dim 2 x 32
    from trainer.modeling import attach_method, compute_dtype, load_model
    from trainer.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "glm-4-tiny", hidden_size=128)
    model = attach_method(
        load_model(model_dir, dtype=compute_dtype()), parse_config(tiny_config("ptuning_v2"))
    )
    assert model.peft_config["default"].token_dim == 64
    assert model.peft_config["default"].num_attention_heads == 2


def test_an_unknown_target_exits_2_with_the_names_to_write(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ruamel.yaml import YAML

    data = write_data(
        tmp_path / "data",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    )
    config_path = tmp_path / "lora.yaml"
    config = train_only_config("lora", 1, peft_config=_lora(["dense"]))
    YAML(typ="safe", pure=True).dump(config, config_path)
    output = tmp_path / "out"
    result = glmft_in_process(
        capsys,
        "finetune",
        str(data),
        str(tiny_model_dir),
        str(config_path),
        "--output-dir",
        str(output),
    )
    assert result.returncode == 2
    status = final_status(read_events(output))
    assert status["code"] == "invalid_config" and status["user_error"] is True
    assert "dense is the remote-code ChatGLM name: write o_proj" in status["message"]
    assert "NoMatchingPeftModuleError" not in result.stderr


def test_refused_fits_raise_config_errors_in_the_trainer(tiny_model_dir: Path) -> None:
    from trainer.modeling import attach_method, compute_dtype, load_model

    shape = {"num_attention_heads": 4, "token_dim": 32}
    config = parse_config(
        tiny_config("ptuning_v2", peft_config={"peft_type": "PREFIX_TUNING", **shape})
    )
    with pytest.raises(ConfigError, match="num_attention_heads: must be the model's KV heads = 2"):
        attach_method(load_model(tiny_model_dir, dtype=compute_dtype()), config)
