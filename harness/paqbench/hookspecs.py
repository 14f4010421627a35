"""The hooks a paqbench plugin can implement.

Every hook is a *register callback*: paqbench calls it once with a ``register``
function, and the plugin calls ``register`` for each thing it provides. Built-in
plugins (``paqbench_plugins.*``) use exactly the same hooks as third-party ones,
which are found through the ``paqbench`` entry-point group::

    [project.entry-points.paqbench]
    my_plugin = "my_package.plugin"

A name registered twice (by two plugins, or twice by one) is an error that names both
plugins, so two packages can never silently shadow each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from paqbench.interfaces import Dataset, Method, Metric, ModelSource, Reporter
    from paqbench.layers.contract import CompressedLayer

PROJECT_NAME = "paqbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def paqbench_register_methods(register: Callable[[type[Method]], None]) -> None:
    """Register compression methods (pruning, quantization, distillation, other).

    Call ``register(MethodClass)`` for each :class:`paqbench.Method` subclass. The class
    declares its ``name``, ``family``, a pydantic ``Params`` model (validated before any
    run starts) and the layer kinds it ``accepts``; ``apply(model, params, ctx)`` changes
    the model in place.
    """


@hookspec
def paqbench_register_metrics(register: Callable[[type[Metric]], None]) -> None:
    """Register metrics.

    Call ``register(MetricClass)`` for each :class:`paqbench.Metric` subclass. Its
    ``measure(model, params, ctx)`` yields :class:`paqbench.Measurement` objects; a metric
    that cannot run in this environment raises :class:`paqbench.Unavailable` with the
    reason (recorded as an unavailable measurement, the run stays ok), or yields single
    measurements marked unavailable; it never reports zero instead.
    """


@hookspec
def paqbench_register_model_sources(register: Callable[[type[ModelSource]], None]) -> None:
    """Register model sources: named models (``smollm2-135m``) or kinds of location
    (hub ids, local directories, GGUF files). ``load(config, ctx)`` returns the model and
    its tokenizer."""


@hookspec
def paqbench_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register text datasets used for calibration and perplexity (``wikitext2``,
    ``ptb``, ``c4``, ...). ``load(split, ctx)`` returns a :class:`paqbench.TextCorpus`
    whose text is identical whether it came from the hub or a local data directory."""


@hookspec
def paqbench_register_reporters(register: Callable[[type[Reporter]], None]) -> None:
    """Register reporters, which turn a finished (or partial) report into files in the
    output directory (``report.json``, ``report.md``, plots, ...)."""


@hookspec
def paqbench_register_layer_formats(register: Callable[[type[CompressedLayer]], None]) -> None:
    """Register compressed layer formats.

    Call ``register(LayerClass)`` for each :class:`paqbench.CompressedLayer` subclass. The
    class declares its ``name``, its layer kind (``paqbench_layer_kind``, what methods
    ``accept``), the ``capabilities`` methods may ask for (zero weights, slice inputs or
    outputs, an exact grid) and the ``state_marker`` whose checkpoint tensor makes
    ``load_quantized`` rebuild it (``empty_from_state``). A registered format saves and
    loads like a built-in one; check it with :func:`paqbench.testing.check_layer_format`.
    """
