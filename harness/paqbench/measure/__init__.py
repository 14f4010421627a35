"""The measuring library: what metric plugins measure with.

Perplexity windows, RACE scoring, peak memory, NVML sampling, timed generation and the
summary statistics of repeated samples live here, so a metric plugin is a thin adapter and
two metrics that time the same loop share this code instead of importing each other.
"""
