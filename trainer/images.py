"""Image files of vision data: where a conversation's ``image`` points, and whether it is an
image glmft will decode.

A conversation names its image by path on its first message (the upstream GLM-4V format). A
relative path is resolved against the directory of the data file (for an uploaded archive: the
archive's root). ``confined`` (the service) refuses absolute paths and paths that leave that
directory, so uploaded data can never make the trainer read another file of the server.

An image is checked from its header before any pixel is decoded: a format from
:data:`FORMATS`, and at most ``max_pixels`` pixels (a small file can declare a huge image: a
decompression bomb). :func:`open_rgb` is the one place that decodes pixels, after the same
checks. This module imports Pillow when it first checks an image (text data never needs it),
and never torch.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.validation_codes import Code

#: Formats glmft decodes (Pillow's names); anything else is refused, whatever its file name.
FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
#: The default bound on an image's declared size (width x height).
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image glmft will not decode; ``code`` is a validator code."""

    def __init__(self, code: Code, message: str) -> None:
        self.code = code
        super().__init__(message)


def image_size(path: Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header of ``path``, checked as the module docstring says.

    Raises:
        ImageError: missing, not an allowed image format, or larger than ``max_pixels``.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _checked(image, path.name, max_pixels)
    except ImageError:
        raise
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ImageError(Code.IMAGE_NOT_FOUND, f"image file not found: {path.name}") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path.name, exc, str(path)) from exc


def open_rgb(source: Path | Any, *, name: str = "image", max_pixels: int = MAX_PIXELS) -> Any:
    """Decode ``source`` (a path or a binary file object) to an RGB ``PIL.Image``.

    Raises:
        ImageError: as :func:`image_size`, or when the pixel data is truncated or corrupt.
    """
    from PIL import Image

    try:
        with Image.open(source) as image:
            _checked(image, name, max_pixels)
            image.load()
            return image.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(Code.IMAGE_NOT_FOUND, f"image file not found: {name}") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(name, exc, str(source) if isinstance(source, Path) else name) from exc


def _unreadable(name: str, exc: Exception, where: str) -> ImageError:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):  # Pillow's own, far higher bound
        return ImageError(Code.IMAGE_TOO_LARGE, f"{name} declares too many pixels ({exc})")
    if isinstance(exc, UnidentifiedImageError):
        why = f"accepted formats: {', '.join(sorted(FORMATS))}"
    else:  # never show the server's paths
        why = str(exc).replace(where, name)
    return ImageError(Code.IMAGE_UNREADABLE, f"{name} is not a readable image ({why})")


def _checked(image: Any, name: str, max_pixels: int) -> tuple[int, int]:
    if image.format not in FORMATS:
        raise ImageError(
            Code.IMAGE_UNREADABLE,
            f"{name}: format {image.format!r} is not accepted "
            f"(accepted: {', '.join(sorted(FORMATS))})",
        )
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ImageError(
            Code.IMAGE_TOO_LARGE,
            f"{name} is {width}x{height} pixels; at most {max_pixels} pixels are decoded",
        )
    return int(width), int(height)


def resolve_image(value: str, root: Path, *, confined: bool) -> Path:
    """The file a conversation's ``image`` names, relative to ``root``.

    Raises:
        ImageError: ``image_path_invalid`` when ``confined`` and the path is absolute or
            leaves ``root``.
    """
    if not confined:
        return Path(value) if Path(value).is_absolute() else root / value
    normal = posixpath.normpath(value.replace("\\", "/"))
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../") or ":" in normal:
        raise ImageError(
            Code.IMAGE_PATH_INVALID,
            f"image path {value!r} must be relative to the archive's root and stay inside it",
        )
    return root / normal


@dataclass
class ImageCheck:
    """How the validator checks the image files of vision data (one instance per run: results
    are cached by path, since many conversations often share an image)."""

    confined: bool = False
    max_pixels: int = MAX_PIXELS
    checked: dict[Path, ImageError | None] = field(default_factory=dict)
    images: int = 0

    def problem(self, value: str, data_file: str) -> ImageError | None:
        """Why the image ``value`` of a conversation in ``data_file`` is unusable, or None."""
        try:
            path = resolve_image(value, Path(data_file).parent, confined=self.confined)
        except ImageError as exc:
            return exc
        if path not in self.checked:
            try:
                image_size(path, max_pixels=self.max_pixels)
                self.checked[path] = None
                self.images += 1
            except ImageError as exc:
                self.checked[path] = exc
        return self.checked[path]
