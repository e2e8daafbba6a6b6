"""The adapters an engine holds: read on a loader thread, installed between steps, evicted least
recently used first.

A LoRA adapter takes a slot of the pool (:mod:`serving.lora`), a P-Tuning v2 prefix keeps its
per-layer keys and values on the device. Loads start from any thread (:meth:`AdapterCache.start`);
everything else runs on the engine thread, between steps, under the engine's lock where callers
read. An adapter that rows are using is never evicted or unloaded; pinned ones stay until unloaded
by name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serving.adapters import AdapterSpec
from serving.errors import AdapterBusyError, AdapterCacheFullError, EngineClosedError
from serving.lora import LoraPool, LoraWeights, read_lora
from serving.weights import load_prefix

logger = logging.getLogger(__name__)

Prefix = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (tokens, kv, dim)


@dataclass
class LoadedAdapter:
    spec: AdapterSpec
    nbytes: int
    pinned: bool = False
    load_ms: float = 0.0
    slot: int = -1  # LoRA: its pool slot
    prefix: Prefix | None = None  # P-Tuning v2, per layer


@dataclass
class PendingLoad:
    """An adapter on its way in: read by the loader thread, installed by the engine thread."""

    spec: AdapterSpec
    started: float
    futures: list[Future[LoadedAdapter]] = field(default_factory=list)
    pin: bool | None = None
    payload: LoraWeights | Prefix | None = None
    error: Exception | None = None

    @property
    def done(self) -> bool:
        """Read (or failed): ready for the engine thread."""
        return self.payload is not None or self.error is not None


NO_ADAPTER = LoadedAdapter(AdapterSpec("", Path(), "lora"), 0)  # a row of the base model


class AdapterCache:
    """Up to ``max_adapters`` adapters (and ``max_adapter_bytes`` of them on disk) of one model.

    Args:
        config, dtype, device: the model's.
        lora: the engine's LoRA pool.
        on_pool_change: called when the pool's tensors were reallocated (graphs are stale).
        lock: the engine's lock (a ``Condition``; notified when a read lands).
    """

    def __init__(
        self,
        *,
        config: Any,
        dtype: torch.dtype,
        device: torch.device,
        lora: LoraPool,
        on_pool_change: Callable[[], None],
        lock: threading.Condition,
        max_adapters: int,
        max_adapter_bytes: int | None,
        name: str,
    ) -> None:
        self.config, self.dtype, self.device = config, dtype, device
        self.lora, self.on_pool_change, self.lock = lora, on_pool_change, lock
        self.max_adapters, self.max_adapter_bytes = max_adapters, max_adapter_bytes
        self.adapters: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self.loads: dict[str, PendingLoad] = {}
        self.users: dict[str, int] = {}  # adapter -> rows using it
        self._free_slots = list(range(max_adapters - 1, -1, -1))
        self._loader = ThreadPoolExecutor(1, thread_name_prefix=f"adapters:{name}")

    # ---- any thread -------------------------------------------------------------------------

    def get(self, name: str) -> LoadedAdapter | None:
        return self.adapters.get(name)

    def snapshot(self) -> dict[str, LoadedAdapter]:
        """The loaded adapters, least recently used first."""
        with self.lock:
            return dict(self.adapters)

    def start(self, spec: AdapterSpec) -> PendingLoad:
        """The load of ``spec`` under way, started now (on the loader thread) if there is none."""
        with self.lock:
            load = self.loads.get(spec.name)
            if load is not None:
                return load
            load = PendingLoad(spec, started=time.perf_counter())
            self.loads[spec.name] = load

        def read() -> None:
            try:
                load.payload = self._read(spec)
            except Exception as exc:  # reported when the engine thread installs it
                load.error = exc
            with self.lock:
                self.lock.notify()

        self._loader.submit(read)
        return load

    def landed(self) -> bool:
        """A read finished (or failed) that the engine thread has not installed yet."""
        return any(load.done for load in self.loads.values())

    def close(self, message: str) -> None:
        """Stop reading; loads still waiting fail."""
        self._loader.shutdown(wait=True, cancel_futures=True)
        for load in self.loads.values():
            for future in load.futures:
                if not future.done():
                    future.set_exception(EngineClosedError(message))
        self.loads.clear()
        self.adapters.clear()
        del self.lora, self.on_pool_change  # the engine's pool and graphs: let them go

    # ---- engine thread ----------------------------------------------------------------------

    def request(self, spec: AdapterSpec, pin: bool | None, future: Future[LoadedAdapter]) -> None:
        """Resolve ``future`` with ``spec`` loaded (now, when it is), setting its pin."""
        loaded = self.adapters.get(spec.name)
        if loaded is not None:
            if pin is not None:
                loaded.pinned = pin
            self.adapters.move_to_end(spec.name)
            future.set_result(loaded)
            return
        load = self.start(spec)
        load.futures.append(future)
        if pin is not None:
            load.pin = pin

    def use(self, name: str) -> None:
        """A row starts using ``name`` (the most recently used now)."""
        self.users[name] = self.users.get(name, 0) + 1
        self.adapters.move_to_end(name)

    def release(self, name: str) -> None:
        self.users[name] -= 1
        if not self.users[name]:
            del self.users[name]

    def install_ready(self) -> list[tuple[PendingLoad, Exception]]:
        """Install every read that has landed and fits; the loads that failed."""
        failed = []
        for name, load in list(self.loads.items()):
            if not load.done:
                continue  # still reading
            try:
                if load.error is not None:
                    raise load.error
                if not self._make_room(_disk_bytes(load.spec.path), keep={name}):
                    continue  # the adapters in the way are answering: try after this step
                loaded = self._install(load)
            except Exception as exc:
                with self.lock:
                    del self.loads[name]
                for future in load.futures:
                    future.set_exception(exc)
                failed.append((load, exc))
                continue
            with self.lock:
                del self.loads[name]
            for future in load.futures:
                future.set_result(loaded)
        return failed

    def unload(self, name: str) -> bool:
        """Unload ``name`` (pinned or not); False when it was not loaded.

        Raises:
            AdapterBusyError: rows are using it.
        """
        if name in self.users:
            raise AdapterBusyError(f"adapter {name} is answering requests; unload it after them")
        with self.lock:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            return False
        if adapter.slot >= 0:
            self.lora.clear(adapter.slot)
            self._free_slots.append(adapter.slot)
        adapter.prefix = None
        logger.info("unloaded adapter %s", name)
        return True

    def _read(self, spec: AdapterSpec) -> LoraWeights | Prefix:
        """The adapter's tensors on the CPU (loader thread)."""
        if spec.kind == "lora":
            return read_lora(spec.path, self.config, self.dtype)
        prefix = load_prefix(spec.path, self.config, device=torch.device("cpu"), dtype=self.dtype)
        return [(k[0].transpose(0, 1), v[0].transpose(0, 1)) for k, v in prefix.layers]

    def _install(self, load: PendingLoad) -> LoadedAdapter:
        spec, payload = load.spec, load.payload
        loaded = LoadedAdapter(spec, _disk_bytes(spec.path), pinned=bool(load.pin))
        if isinstance(payload, LoraWeights):
            if self.lora.fit(payload):
                self.on_pool_change()
            loaded.slot = self._free_slots.pop()
            self.lora.write(loaded.slot, payload)
        elif payload is not None:
            loaded.prefix = [(k.to(self.device), v.to(self.device)) for k, v in payload]
        loaded.load_ms = (time.perf_counter() - load.started) * 1000
        with self.lock:
            self.adapters[spec.name] = loaded
        logger.info("loaded adapter %s (%s) in %.0f ms", spec.name, spec.kind, loaded.load_ms)
        return loaded

    def _make_room(self, nbytes: int, *, keep: set[str]) -> bool:
        """Unload least recently used idle adapters until one more of ``nbytes`` fits; False
        while the ones in the way answer requests.

        Raises:
            AdapterCacheFullError: every adapter in the way is pinned.
        """

        def full() -> bool:
            used = sum(a.nbytes for a in self.adapters.values()) + nbytes
            budget = self.max_adapter_bytes
            return len(self.adapters) >= self.max_adapters or (budget is not None and used > budget)

        busy = False
        for name, adapter in list(self.adapters.items()):  # least recently used first
            if not full():
                return True
            if adapter.pinned or name in keep:
                continue
            if name in self.users:
                busy = True
                continue
            self.unload(name)
        if not full():
            return True
        if busy:
            return False
        raise AdapterCacheFullError(
            f"no room for another adapter: {len(self.adapters)} loaded "
            f"(limit {self.max_adapters}), all pinned"
        )


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("adapter_model.*"))
