"""What the engines report to their callers as exceptions (torch-free, for the API)."""


class EngineClosedError(RuntimeError):
    """The engine was closed; nothing more can be asked of it."""


class AdapterCacheFullError(RuntimeError):
    """Every adapter slot is pinned: unload or unpin one first."""


class AdapterBusyError(RuntimeError):
    """The adapter is answering requests; it can be unloaded once they are done."""


class ModelCacheFullError(RuntimeError):
    """Every model slot of the process holds a busy model."""
