"""Vision datasets for tests: solid-colour images and conversations asking for the colour,
packed as the archives ``POST /datasets`` takes (and as hostile ones it must refuse)."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import zipfile
from typing import Any

from PIL import Image

#: colour name -> (RGB, the answer the adapter is trained to give)
COLOURS: dict[str, tuple[tuple[int, int, int], str]] = {
    "red": ((230, 30, 30), "红色"),
    "blue": ((30, 30, 230), "蓝色"),
}
QUESTION = "图片是什么颜色？"


def png(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def conversation(image: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "image": image, "content": QUESTION},
            {"role": "assistant", "content": answer},
        ]
    }


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def colour_files(repeat: int = 4, folder: str = "") -> dict[str, bytes]:
    """``train.jsonl`` (each colour ``repeat`` times), ``dev.jsonl`` and ``images/*.png``."""
    files = {f"{folder}images/{name}.png": png(rgb) for name, (rgb, _) in COLOURS.items()}
    rows = [
        conversation(f"images/{name}.png", answer)
        for _ in range(repeat)
        for name, (_, answer) in COLOURS.items()
    ]
    files[f"{folder}train.jsonl"] = jsonl(rows)
    files[f"{folder}dev.jsonl"] = jsonl(rows[: len(COLOURS)])
    return files


def zip_bytes(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A zip of ``files``; ``links`` adds symlink members (name -> target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # S_IFLNK
            zf.writestr(info, target)
    return buffer.getvalue()


def tar_gz_bytes(
    files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None
) -> bytes:
    """A .tar.gz of ``files``; ``links`` adds link members (name -> (tar type, target))."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return buffer.getvalue()
