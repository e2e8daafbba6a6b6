"""glmft worker: claims jobs, leases GPUs, launches and supervises the trainer, records its events.

The modules here that carry no Celery, SQL or web imports (``gpus``, ``launcher``,
``events_tail``) are the node-local building blocks the Celery tasks and the runner compose.
"""
