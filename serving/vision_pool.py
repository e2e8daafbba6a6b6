"""The vision engines of one process (:class:`serving.vision.VisionEngine`), one per model
directory, at most ``max_models``; the least recently used idle one is closed to make room."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from serving.errors import ModelCacheFullError
from serving.vision import VisionEngine


class VisionPool:
    """The vision engines of one process, one per model directory, at most ``max_models``;
    the least recently used idle one is closed to make room."""

    def __init__(self, *, max_models: int = 2, **limits: Any) -> None:
        self.max_models = max_models
        self._limits = limits
        self._engines: OrderedDict[Path, VisionEngine] = OrderedDict()
        self._lock = threading.Lock()  # held through a load: one load at a time

    def get(
        self, model_dir: Path, *, tokenizer_dir: Path | None = None, trust_remote_code: bool = False
    ) -> VisionEngine:
        key = model_dir.resolve()
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                while len(self._engines) >= self.max_models:
                    idle = [k for k, e in self._engines.items() if not (e.queued or e.busy)]
                    if not idle:
                        raise ModelCacheFullError(
                            f"{len(self._engines)} vision models are loaded and busy "
                            f"(limit {self.max_models})"
                        )
                    self._engines.pop(idle[0]).close()
                engine = VisionEngine.open(
                    key,
                    tokenizer_dir=tokenizer_dir,
                    trust_remote_code=trust_remote_code,
                    **self._limits,
                )
                self._engines[key] = engine
            self._engines.move_to_end(key)
            return engine

    def find(self, model_dir: Path) -> VisionEngine | None:
        with self._lock:
            return self._engines.get(model_dir.resolve())

    def close_model(self, model_dir: Path) -> bool:
        with self._lock:
            engine = self._engines.pop(model_dir.resolve(), None)
        if engine is None:
            return False
        engine.close()
        return True

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.close()
