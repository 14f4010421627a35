"""The ``paqbench`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from paqbench.fsio import OutputError, check_output_dir, output_dir_problem, safe_dir_name
from paqbench.logs import configure_logging
from paqbench.plugin_manager import PluginLoadError, get_plugin_manager
from paqbench.registry import DuplicateNameError, Registry
from paqbench.version import __version__

EXIT_USAGE = 2


def _registry():
    try:
        pm = get_plugin_manager()
        return pm, Registry.from_plugin_manager(pm)
    except (PluginLoadError, DuplicateNameError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _plan(suite_path: str, **overrides):
    from paqbench.planner import Overrides, build_plan  # lazy: CLI startup (--help stays fast)
    from paqbench.suite import SuiteError, load_suite  # lazy: CLI startup (--help stays fast)

    _, registry = _registry()
    try:
        loaded = load_suite(suite_path)
        plan = build_plan(loaded, registry, Overrides(**overrides))
    except SuiteError as exc:
        for problem in exc.problems:
            click.echo(f"Error: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    return loaded, plan, registry


def _plan_text(plan) -> str:
    from tabulate import tabulate  # lazy: CLI startup (--help stays fast)

    rows = []
    for index, run in enumerate(plan.runs, start=1):
        steps = " -> ".join(
            s.method + "(" + ", ".join(f"{k}={v}" for k, v in s.params.items() if v is not None) + ")"
            for s in run.steps
        ) or "(uncompressed)"
        rows.append([index, run.name, steps, run.config_hash])
    metrics = ", ".join(m.name for m in plan.runs[0].metrics) or "(none)"
    text = (
        f"suite {plan.suite_name}: {len(plan.runs)} runs of model {plan.runs[0].model['source']} "
        f"({plan.runs[0].model_source}); metrics: {metrics}\n"
        + tabulate(rows, headers=["#", "run", "steps", "id"])
    )
    for line in plan.data:
        text += f"\ndata: {line}"
    for search in plan.searches:
        o = search.objective
        bound = f"<= {o['max']:g}" if o.get("max") is not None else f">= {o['min']:g}"
        text += (f"\nthreshold search {search.name}: {o['find']} {search.label} in [{search.low:g}, {search.high:g}]"
                 f" (tol {search.tol:g}, at most {search.max_probes} probe runs) with {o['metric']} {bound}")
    return text


@click.group()
@click.version_option(__version__, prog_name="paqbench")
def main() -> None:
    """paqbench: benchmark compressed LLMs — pruning, quantization and distillation
    pipelines in any order, measured the same way every time."""


@main.command()
@click.argument("suite", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Output directory (default: the suite's `output`, else reports/<suite name>).")
@click.option("--model", help="Replace the suite's model (e.g. smollm2-135m, a hub id, a path).")
@click.option("--device", help="Replace the suite's device (cpu, cuda, cuda:1, auto).")
@click.option("--limit", type=click.IntRange(min=1), help="Cap evaluation work (windows, examples) for a quick run.")
@click.option("--only", multiple=True, help="Run only this pipeline (repeatable); the baseline always runs.")
@click.option("--resume/--force", default=True, show_default=True,
              help="Skip runs already recorded in the output directory, or archive them and rerun everything.")
@click.option("--dry-run", is_flag=True, help="Print the expanded plan and exit.")
@click.option("--in-process", is_flag=True, help="Run in this process instead of one process per run (for debugging).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds per run before it is stopped and recorded as failed.")
@click.option("--verbose", "-v", count=True, help="Log progress (-v) or debug details (-vv).")
def run(suite, output, model, device, limit, only, resume, dry_run, in_process, timeout, verbose):
    """Run SUITE: every pipeline, every metric, then write the reports."""
    level = logging.WARNING - 10 * min(verbose, 2)
    configure_logging(level)
    loaded, plan, registry = _plan(suite, model=model, device=device, limit=limit, only=tuple(only))
    if timeout:
        for spec in plan.runs:
            spec.timeout = timeout
    if dry_run:
        click.echo(_plan_text(plan))
        return
    from paqbench.runner.ray_executor import ExecutorError  # lazy: CLI startup (--help stays fast)
    from paqbench.runner.session import OutputDirConflict, run_plan  # lazy: CLI startup (--help stays fast)

    output_dir = _output_dir(output, loaded.suite)
    isolation = "in-process" if in_process else loaded.suite.runner.isolation
    try:
        check_output_dir(output_dir)
        summary = run_plan(plan, output_dir, registry=registry, isolation=isolation, resume=resume,
                           force=not resume, echo=lambda m: click.echo(m, err=True), log_level=level,
                           runner=loaded.suite.runner)
    except (OutputDirConflict, OutputError) as exc:
        _fail(str(exc))
    except ExecutorError as exc:  # Ray missing or unusable: the suite's runner section is at fault
        _fail(f"{suite}: {exc}")
    files = _write_reports(output_dir, loaded.suite.reporters, registry)
    for outcome in summary.searches:
        click.echo(f"threshold search {outcome.summary()}", err=True)
    search_failed = any(o.status == "failed" for o in summary.searches)
    ok = sum(1 for r in summary.ran if r.status == "ok")
    click.echo(
        f"{ok} ok, {len(summary.failed)} failed, {len(summary.skipped)} already recorded"
        f" -> {', '.join(str(f) for f in files)}", err=True,
    )
    if summary.interrupted:
        click.echo("Interrupted: finished runs are kept; run the same command again to resume.", err=True)
        sys.exit(130)
    sys.exit(1 if summary.failed or search_failed else 0)


def _output_dir(output: str | None, suite) -> Path:
    """``--output``, else the suite's ``output``, else ``reports/<name>`` shortened to a safe length."""
    if output or suite.output:
        return Path(output or suite.output)
    name = safe_dir_name(suite.name)
    if name != suite.name:
        click.echo(f"note: the suite name is too long for a directory name; writing to reports/{name}", err=True)
    return Path("reports") / name


def _write_reports(output_dir: Path, reporters: list[str], registry) -> list[Path]:
    from paqbench.report import build_report  # lazy: CLI startup (--help stays fast)
    from paqbench.runner.store import ResultStore  # lazy: CLI startup (--help stays fast)

    store = ResultStore(output_dir)
    for number in store.corrupt_lines():
        click.echo(f"Warning: {store.path}:{number}: not a valid result record; skipped", err=True)
    report = build_report(output_dir)
    files: list[Path] = []
    for name in reporters:
        files += registry.reporter(name)().write(report, output_dir)
    return files


@main.command()
@click.argument("suites", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", help="Validate as if run with --model.")
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
def validate(suites, model, quiet):
    """Check suite files against the schema and the installed plugins; print each plan."""
    for suite in suites:
        loaded, plan, _ = _plan(suite, model=model)
        problem = output_dir_problem(_output_dir(None, loaded.suite))
        if problem:
            _fail(f"{suite}: {problem}")
        if loaded.suite.runner.executor == "ray":
            from paqbench.runner.ray_executor import (  # lazy: CLI startup (--help stays fast)
                ExecutorError,
                check_installed,
            )

            try:
                check_installed()
            except ExecutorError as exc:
                _fail(f"{suite}: {exc}")
        if quiet:
            continue
        click.echo(f"{suite}: ok")
        click.echo(_plan_text(plan))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--reporter", "reporters", multiple=True, help="Reporter to use (default: the suite's).")
def report(directory, reporters):
    """Regenerate the reports of DIRECTORY from its results.jsonl."""
    from paqbench.runner.store import ResultStore  # lazy: CLI startup (--help stays fast)

    _, registry = _registry()
    store = ResultStore(Path(directory))
    if not store.exists():
        _fail(f"{directory} holds no results.jsonl")
    manifest = store.read_manifest() or {}
    names = list(reporters) or (manifest.get("resolved_suite") or {}).get("reporters") or ["json", "markdown", "html"]
    for path in _write_reports(Path(directory), names, registry):
        click.echo(str(path))


@main.command()
@click.argument("base", type=click.Path(exists=True))
@click.argument("new", type=click.Path(exists=True))
@click.option("--max-regression", "-t", "limits", multiple=True, metavar="KEY=LIMIT",
              help="How much worse KEY may get: a metric (perplexity), a measurement (latency/tpot, race/high/acc) "
                   "or a glob; LIMIT relative (2%) or absolute (0.01). Repeatable; overrides the file's.")
@click.option("--thresholds", "thresholds_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML file: max_regression: {KEY: LIMIT}, baseline_relative: [KEY], noise_sigmas, ...")
@click.option("--min-recovery", "floors", multiple=True, metavar="KEY=PERCENT",
              help="Fail when NEW's KEY (a quality metric) keeps less than PERCENT of NEW's own dense baseline "
                   "(e.g. perplexity=95). Repeatable; overrides the file's min_recovery.")
@click.option("--baseline-relative", "-r", multiple=True, metavar="KEY",
              help="Compare KEY as a ratio to each report's own dense baseline run (e.g. latency), "
                   "so a slower machine does not fail. Repeatable.")
@click.option("--noise-sigmas", type=click.FloatRange(min=0),
              help="Width of the noise band in combined spreads (default 1; 0 disables).")
@click.option("--stderr-is-noise", is_flag=True, default=None,
              help="Also treat a stderr (perplexity, accuracy) as run-to-run noise.")
@click.option("--fail-on-missing", is_flag=True, default=None, help="Fail when a BASE run is not in NEW.")
@click.option("--strict-match", is_flag=True, default=None,
              help="Pair runs only by pipeline and parameters, never by run name.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the comparison as JSON here.")
def compare(base, new, limits, floors, thresholds_file, baseline_relative, noise_sigmas, stderr_is_noise,
            fail_on_missing, strict_match, json_path):
    """Compare NEW against BASE (result directories or report.json files).

    Prints a Markdown table of every metric of every matching run with its change and
    verdict. Exit code 1 when a metric got worse than its threshold allows (or a run that
    was ok in BASE failed in NEW), 0 otherwise, 2 for invalid input.
    """
    from paqbench.compare import (  # lazy: CLI startup (--help stays fast)
        CompareOptions,
        ReportNotFound,
        ThresholdError,
        compare_reports,
        load_report,
        load_thresholds_file,
        parse_floor_option,
        parse_option,
        to_markdown,
        write_json,
    )

    try:
        settings = load_thresholds_file(thresholds_file) if thresholds_file else {}
        given = [parse_option(text) for text in limits]
        given_floors = [parse_floor_option(text) for text in floors]
    except ThresholdError as exc:
        _fail(str(exc))
    keep = [t for t in settings.get("thresholds", ()) if t.key not in {g.key for g in given}]
    settings["thresholds"] = (*keep, *given)
    kept_floors = [f for f in settings.get("min_recovery", ()) if f.key not in {g.key for g in given_floors}]
    settings["min_recovery"] = (*kept_floors, *given_floors)
    settings["baseline_relative"] = (*settings.get("baseline_relative", ()), *baseline_relative)
    for name, value in (("noise_sigmas", noise_sigmas), ("stderr_is_noise", stderr_is_noise),
                        ("fail_on_missing", fail_on_missing), ("strict_match", strict_match)):
        if value is not None:
            settings[name] = value
    try:
        base_report, new_report = load_report(base), load_report(new)
    except ReportNotFound as exc:
        _fail(str(exc))
    comparison = compare_reports(base_report, new_report, CompareOptions(**settings), str(base), str(new))
    click.echo(to_markdown(comparison))
    if json_path:
        write_json(comparison, json_path)
    if comparison.failed:
        names = [f"{d.run}: {d.key}" for d in comparison.regressions] + comparison.run_regressions
        click.echo(f"REGRESSION ({len(names)}): " + "; ".join(names), err=True)
        sys.exit(1)


@main.command()
def plugins():
    """List loaded plugins: distribution, version and what each registers."""
    from paqbench.listing import plugins_text  # lazy: CLI startup (--help stays fast)

    pm, registry = _registry()
    click.echo(plugins_text(pm, registry))


@main.command(name="list")
@click.argument("kind", type=click.Choice(["methods", "metrics", "models", "datasets", "reporters", "formats"]))
@click.option("--verbose", "-v", is_flag=True, help="Show descriptions and every parameter with type and default.")
def list_(kind, verbose):
    """List registered methods, metrics, models, datasets, reporters or layer formats."""
    from paqbench.listing import list_text  # lazy: CLI startup (--help stays fast)

    _, registry = _registry()
    click.echo(list_text(registry, kind, verbose))


if __name__ == "__main__":  # pragma: no cover
    main()
