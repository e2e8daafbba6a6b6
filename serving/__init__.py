"""Serving fine-tuned GLM-4 models: one engine per base model with its adapters hot-loaded
(ARCHITECTURE.md decision 8). Nothing here imports the web or the store."""
