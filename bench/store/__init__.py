"""The tracking store: the MLflow adapter (writing runs, reading them back) and run sessions (resume)."""
