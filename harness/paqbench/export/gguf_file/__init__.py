"""GGUF export (llama.cpp): blocks from paqbench's codes, names, metadata, the writer."""
