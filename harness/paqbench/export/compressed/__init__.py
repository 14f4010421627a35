"""compressed-tensors export (transformers, vLLM): packed tensors, config, the writer."""
