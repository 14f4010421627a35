"""Reload an exported artifact in its engine and compare its logits with paqbench's."""
