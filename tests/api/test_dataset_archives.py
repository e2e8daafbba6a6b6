"""Dataset archives (.zip, .tar.gz) through ``POST /datasets``: unpacked with the images beside
the data files, validated as vision data; hostile archives refused with a 4xx and nothing left
on disk; jobs whose base and data do not fit refused at ``POST /jobs``."""

from __future__ import annotations

import json
import struct
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import BaseModelEntry, Limits, Settings
from tests.api.conftest import REDIS_URL
from tests.api.helpers import assert_error, upload
from tests.vision_data import colour_files, conversation, jsonl, png, tar_gz_bytes, zip_bytes

VISION = "glm-4v-tiny"
TEXT_ROW = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


@pytest.fixture
def settings(
    tmp_path: Path, tiny_model_dir: Path, tiny_vision_model_dir: Path, broker: redis.Redis
) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'glmft.db'}",
        broker_url=REDIS_URL,
        artifact_root=tmp_path / "artifacts",
        models={
            "glm-4-tiny": BaseModelEntry(path=tiny_model_dir),
            VISION: BaseModelEntry(path=tiny_vision_model_dir),
            "remote": BaseModelEntry(path=_remote_code_model(tmp_path)),
            "remote-trusted": BaseModelEntry(
                path=_remote_code_model(tmp_path), trust_remote_code=True
            ),
        },
        limits=Limits(max_archive_bytes=1_000_000, max_archive_files=50, max_image_pixels=10**6),
    )


def _remote_code_model(tmp_path: Path) -> Path:
    """A checkpoint directory whose config names its own modeling code (as glm-4-9b-chat's)."""
    path = tmp_path / "remote-code"
    path.mkdir(exist_ok=True)
    config = {"model_type": "chatglm", "auto_map": {"AutoModel": "modeling_chatglm.ChatGLMModel"}}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def datasets_on_disk(settings: Settings) -> list[Path]:
    root = settings.artifacts / "datasets" / "default"
    return sorted(root.iterdir()) if root.is_dir() else []


@pytest.mark.parametrize(
    ("name", "pack"),
    [("colours.zip", zip_bytes), ("colours.tar.gz", tar_gz_bytes)],
)
def test_archive_is_unpacked_and_validated_as_vision_data(
    client: TestClient, settings: Settings, name: str, pack: object
) -> None:
    files = colour_files(folder="colours/")  # as zipping a folder makes it
    response = upload(client, pack(files), filename=name)  # type: ignore[operator]
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["valid"] is True, body["report"]
    assert body["conversations"] == 8 + 2  # train.jsonl and dev.jsonl
    assert body["report"]["stats"]["archive"]["images"] == 2
    assert body["report"]["stats"]["images_referenced"] == 2
    root = settings.artifacts / "datasets" / "default" / body["id"] / "files"
    assert (root / "images" / "red.png").read_bytes() == files["colours/images/red.png"]
    assert not (root.parent / name).exists()  # the archive itself is not kept
    assert client.delete(f"/datasets/{body['id']}").status_code == 204
    assert datasets_on_disk(settings) == []


def test_missing_and_escaping_images_are_reported_by_line(client: TestClient) -> None:
    files = colour_files()
    files["train.jsonl"] += jsonl(
        [
            conversation("images/purple.png", "紫色"),
            conversation("../../etc/passwd", "?"),
            conversation("train.jsonl", "?"),
        ]
    )
    body = upload(client, zip_bytes(files), filename="data.zip").json()
    assert body["valid"] is False
    found = {(e["line"], e["code"]) for e in body["report"]["errors"]}
    assert found == {(9, "image_not_found"), (10, "image_path_invalid"), (11, "image_unreadable")}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: a decompression bomb's
    header (the pixels would come from a tiny, highly compressed IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


GOOD = colour_files()
SYMLINK, HARDLINK = tarfile.SYMTYPE, tarfile.LNKTYPE
# case -> (file name, bytes, status, code, words of the message)
HOSTILE: dict[str, tuple[str, bytes, int, str, str]] = {
    "zip slip": ("a.zip", zip_bytes({**GOOD, "../evil.txt": b"x"}), 422, "invalid_archive", "'..'"),
    "absolute": ("a.zip", zip_bytes({**GOOD, "/evil.txt": b"x"}), 422, "invalid_archive", "absol"),
    "zip symlink": (
        "a.zip", zip_bytes(GOOD, links={"images/x.png": "/etc/passwd"}), 422,
        "invalid_archive", "links",
    ),
    "tar symlink": (
        "a.tar.gz", tar_gz_bytes(GOOD, links={"x.png": (SYMLINK, "/etc/passwd")}), 422,
        "invalid_archive", "links",
    ),
    "tar hardlink": (
        "a.tar.gz", tar_gz_bytes(GOOD, links={"x.png": (HARDLINK, "train.jsonl")}), 422,
        "invalid_archive", "links",
    ),
    "bomb": (
        "a.zip", zip_bytes({**GOOD, "zeros.bin": bytes(2_000_000)}), 413, "payload_too_large",
        "unpacks to more than",
    ),
    "too many files": (
        "a.zip", zip_bytes({**GOOD, **{f"f{i}.txt": b"" for i in range(60)}}), 422,
        "invalid_archive", "more than 50 files",
    ),
    "not a png": (
        "a.zip", zip_bytes({**GOOD, "images/red.png": b"MZ\x90 not an image"}), 422,
        "invalid_archive", "images/red.png",
    ),
    "pixel bomb": (
        "a.zip", zip_bytes({**GOOD, "images/red.png": _png_header(2_000, 2_000)}), 422,
        "invalid_archive", "2000x2000",
    ),
    "no train.jsonl": (
        "a.zip", zip_bytes({"images/red.png": png((1, 2, 3))}), 422,
        "invalid_archive", "train.jsonl",
    ),
    "not an archive": ("a.tar.gz", b"not gzip", 422, "invalid_archive", "not a readable"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_leave_nothing(
    client: TestClient, settings: Settings, case: str
) -> None:
    name, content, status, code, words = HOSTILE[case]
    error = assert_error(upload(client, content, filename=name), status, code, param="file")
    assert words in error["message"], error
    assert datasets_on_disk(settings) == []
    assert not (settings.artifacts / "evil.txt").exists()
    assert not (settings.artifacts / "datasets" / "evil.txt").exists()


def _job(client: TestClient, dataset: str, model: str, **extra: object) -> object:
    body = {"model": model, "method": "lora", "training_dataset": dataset, "gpus": 0}
    body["config"] = "tiny/lora"
    return client.post("/jobs", json={**body, **extra})


def test_jobs_check_base_data_and_config(client: TestClient) -> None:
    archive = upload(client, zip_bytes(colour_files()), filename="c.zip").json()["id"]
    text = upload(client, TEXT_ROW).json()["id"]
    error = assert_error(_job(client, archive, "glm-4-tiny"), 422, "invalid_request")
    assert error["param"] == "training_dataset" and "not a vision model" in error["message"]
    assert_error(
        _job(client, archive, VISION, validation_dataset=text), 422, "invalid_request",
        param="validation_dataset",
    )  # fmt: skip
    packed = _job(client, archive, VISION, overrides={"packing": True})
    assert_error(packed, 422, "invalid_config", param="config.packing")
    trusted = _job(client, archive, VISION, overrides={"trust_remote_code": True})
    error = assert_error(trusted, 422, "invalid_config", param="overrides.trust_remote_code")
    assert "operator" in error["message"]
    accepted = _job(client, archive, VISION, overrides={"training_args.max_steps": 2})
    assert accepted.status_code == 201, accepted.text  # type: ignore[attr-defined]


def test_remote_code_bases_train_only_where_the_operator_trusted_them(client: TestClient) -> None:
    text = upload(client, TEXT_ROW).json()["id"]
    error = assert_error(_job(client, text, "remote"), 422, "unsupported_model", param="model")
    assert "GLMFT_MODELS__remote__TRUST_REMOTE_CODE" in error["message"]
    accepted = _job(client, text, "remote-trusted", overrides={"training_args.max_steps": 1})
    assert accepted.status_code == 201, accepted.text  # type: ignore[attr-defined]
