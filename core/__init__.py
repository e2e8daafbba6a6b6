"""glmft core: settings, the SQL store's tables, the job state machine and the error vocabulary.

Shared by the API and the workers. Never imports fastapi, celery or torch.
"""
