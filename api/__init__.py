"""glmft HTTP API (FastAPI)."""
