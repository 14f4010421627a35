"""Peers' implementations as steps (torchao, hqq-lib, auto-round, llmcompressor), each
converted into paqbench's layer formats; see docs/peers.md."""
