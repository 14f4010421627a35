"""Model sources: hub ids and local directories, GGUF files, and embedded models."""
