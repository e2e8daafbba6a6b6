"""The engines of one process: one per model directory (a base model or a full-SFT checkpoint),
at most ``max_models`` of them; the least recently used idle one is closed to make room. The text
engines (:class:`serving.engine.Engine`) and the vision ones (:class:`serving.vision.VisionEngine`)
each have a pool."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from serving.errors import ModelCacheFullError

IDLE_BEFORE_CLOSE_S = 2.0


class PooledEngine(Protocol):
    name: str

    @property
    def idle_s(self) -> float: ...

    def capacity(self) -> dict[str, int]: ...

    def close(self) -> None: ...


E = TypeVar("E", bound=PooledEngine)


class EnginePool(Generic[E]):
    """Engines by model directory.

    Args:
        opener: makes the engine of a model directory (``Engine.open``).
        max_models: engines kept open at once.
        engine_args: the keyword arguments every engine gets (limits).
    """

    def __init__(self, opener: Callable[..., E], *, max_models: int = 2, **engine_args: Any):
        self.opener, self.max_models = opener, max_models
        self._engine_args = engine_args
        self._engines: OrderedDict[Path, E] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Path, threading.Lock] = {}

    def get(self, model_dir: Path, *, tokenizer_dir: Path | None = None, **open_args: Any) -> E:
        """The engine of ``model_dir``, loading the model on first use (slow: call off the
        event loop); ``tokenizer_dir`` and ``open_args`` go to the opener."""
        key = model_dir.resolve()
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                self._engines.move_to_end(key)
                return engine
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per directory; others wait for it
            with self._lock:
                engine = self._engines.get(key)
                if engine is not None:
                    return engine
                self._make_room()
            engine = self.opener(key, tokenizer_dir=tokenizer_dir, **self._engine_args, **open_args)
            with self._lock:
                self._engines[key] = engine
            return engine

    def find(self, model_dir: Path) -> E | None:
        """The engine of ``model_dir`` when it is loaded (never loads)."""
        with self._lock:
            return self._engines.get(model_dir.resolve())

    def close_model(self, model_dir: Path) -> bool:
        """Close the engine of ``model_dir``; False when none was loaded."""
        with self._lock:
            engine = self._engines.pop(model_dir.resolve(), None)
        if engine is None:
            return False
        engine.close()
        return True

    def capacity(self) -> dict[str, dict[str, int]]:
        """Each open engine's ``capacity()``, by model directory name."""
        with self._lock:
            engines = list(self._engines.values())
        return {engine.name: engine.capacity() for engine in engines}

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.close()

    def _make_room(self) -> None:
        while len(self._engines) >= self.max_models:
            # an engine idle only a moment may be between a caller's requests (an evaluation)
            idle = [k for k, e in self._engines.items() if e.idle_s >= IDLE_BEFORE_CLOSE_S]
            if not idle:
                raise ModelCacheFullError(
                    f"{len(self._engines)} models are loaded and busy (limit {self.max_models})"
                )
            self._engines.pop(idle[0]).close()
