"""The shared vocabulary of the pipeline: nodes, documents, the typed build config and the stage accounting (stdlib only)."""
