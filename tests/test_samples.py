"""The samples metric (greedy continuations) and its report.md section."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from paqbench_plugins.metrics.samples import DEFAULT_PROMPTS, Samples, SamplesParams, encode
from paqbench_plugins.reporters.markdown import fenced, generation_samples, md_text


def _measure(model, ctx, **params):
    (measurement,) = Samples().measure(model, SamplesParams(**params), ctx)
    return measurement


def test_greedy_samples_are_deterministic_and_respect_max_new_tokens(tiny_llama, make_context):
    ctx = make_context()
    first = _measure(tiny_llama, ctx, max_new_tokens=6)
    again = _measure(tiny_llama, ctx, max_new_tokens=6)
    outputs = first.details["outputs"]
    assert [o["prompt"] for o in outputs] == list(DEFAULT_PROMPTS)
    assert [o["text"] for o in outputs] == [o["text"] for o in again.details["outputs"]]
    assert all(1 <= o["new_tokens"] <= 6 for o in outputs)
    assert all(len(o["token_ids"]) == o["new_tokens"] for o in outputs)
    assert first.value == pytest.approx(sum(o["new_tokens"] for o in outputs) / 3)
    assert first.samples == [float(o["new_tokens"]) for o in outputs]
    assert (first.metric, first.name, first.unit, first.better) == ("samples", "generated_tokens", "tokens", None)
    longer = _measure(tiny_llama, ctx, max_new_tokens=10)
    for short, long in zip(outputs, longer.details["outputs"], strict=True):
        assert long["token_ids"][: short["new_tokens"]] == short["token_ids"]  # greedy: one path
        if not short["stopped_at_eos"]:
            assert long["new_tokens"] > short["new_tokens"]


def test_suite_prompts_and_plain_text_without_a_chat_template(tiny_llama, make_context, tiny_tokenizer):
    measurement = _measure(tiny_llama, make_context(), prompts=["Hello there"], max_new_tokens=3, chat=True)
    (output,) = measurement.details["outputs"]
    assert output["prompt"] == "Hello there" and output["encoding"] == "plain text"
    assert measurement.details["chat"] is True and measurement.details["chat_template"] is False


def test_chat_template_is_applied_when_asked_and_present(tiny_tokenizer):
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    ids, how = encode("Hi", tiny_tokenizer, chat=True)
    assert how == "chat template"
    assert ids == list(tiny_tokenizer("<user>Hi</user><assistant>", add_special_tokens=False).input_ids)
    plain, how = encode("Hi", tiny_tokenizer, chat=False)
    assert how == "plain text" and plain == list(tiny_tokenizer("Hi").input_ids)


def test_params_are_checked():
    with pytest.raises(ValidationError):
        SamplesParams(prompts=[])
    with pytest.raises(ValidationError):
        SamplesParams(max_new_tokens=0)


# -- report.md -----------------------------------------------------------------------------


def _run(name, pipeline, texts, status="ok"):
    measurements = []
    if texts is not None:
        measurements.append({
            "metric": "samples", "name": "generated_tokens", "value": 4.0, "unit": "tokens", "better": None,
            "details": {"max_new_tokens": 32, "chat": False, "chat_template": False,
                        "outputs": [{"prompt": p, "text": t, "new_tokens": 4} for p, t in texts.items()]},
        })
    return {"name": name, "pipeline": pipeline, "status": status, "measurements": measurements}


def test_markdown_section_shows_each_prompt_verbatim_with_baseline_first():
    runs = [
        _run("baseline", "baseline", {"Say | hi": "a | b\nsecond line <script>*x*", "Q2": "ok"}),
        _run("m[sparsity=0.5]", "m", {"Say | hi": "|||\r\n```code``` [link](u) _e_ # h", "Q2": ""}),
        _run("broken", "broken", None, status="failed"),
    ]
    lines = generation_samples(runs)
    text = "\n".join(lines)
    assert lines[0] == "## Generation samples"
    assert "### Prompt 1\n\n```text\nSay | hi\n```" in text and "### Prompt 2\n\n```text\nQ2\n```" in text
    names = [line for line in lines if line.startswith("**")]
    assert names == ["**baseline**", "**m[sparsity=0.5]**", "**broken**: *run failed*"] * 2
    # model output is verbatim inside its fence: no <br>, no &nbsp;, no Markdown escapes
    assert "**baseline**\n\n```text\na | b\nsecond line <script>*x*\n```" in text
    # a fence longer than any run of backticks in the text, so ``` inside cannot close it
    assert "\n````text\n|||\n```code``` [link](u) _e_ # h\n````" in text
    assert "**m[sparsity=0.5]**\n\n```text\n(empty)\n```" in text
    assert "<br>" not in text and "&nbsp;" not in text


def test_fenced_shows_control_characters_and_keeps_lines():
    assert fenced("a\x0fb\tc\rd") == ["```text", "a\\x0fb\tc", "d", "```"]
    assert fenced("x\n\ny", "") == ["```", "x", "", "y", "```"]


def test_md_text_shows_control_characters_and_keeps_one_line():
    assert md_text("a\x0fb\tc\rd") == "a\\x0fb c<br>d"
    assert md_text("back\\slash") == "back\\\\slash"
    assert "\n" not in md_text("x\n\ny")
    assert md_text("a   b") == "a &nbsp;&nbsp;b"  # degenerate runs of spaces stay visible in a table cell


def test_no_section_without_samples():
    assert generation_samples([_run("baseline", "baseline", None)]) == []


def test_suite_with_samples_and_plots_end_to_end(tmp_path):
    """A tiny suite run in-process: report.md gets the samples section and the plot links."""
    from paqbench.planner import build_plan
    from paqbench.registry import get_registry
    from paqbench.report import build_report
    from paqbench.runner.session import run_plan
    from paqbench.suite import load_suite
    from tests.helpers import TINY_SUITE, write_suite

    suite = TINY_SUITE.replace("  - params\n", "  - params\n  - samples: {max_new_tokens: 4}\n")
    suite = suite.replace("      - magnitude: {sparsity: [0.25, 0.5]}", "      - magnitude: {sparsity: [0.25, 0.5]}\n"
                          "reporters: [json, markdown, plots]")
    registry = get_registry()
    plan = build_plan(load_suite(write_suite(tmp_path, suite)), registry)
    out = tmp_path / "out"
    run_plan(plan, out, registry=registry, isolation="in-process", echo=lambda m: None)
    report = build_report(out)
    for name in report.suite["reporters"]:
        registry.reporter(name)().write(report, out)
    md = (out / "report.md").read_text()
    assert "## Generation samples" in md and md.count("**magnitude[sparsity=0.5]**") == len(DEFAULT_PROMPTS)
    assert "](plot_tradeoffs.png)" in md and "](plot_sweeps.png)" in md
    assert (out / "plot_sweeps.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.realmodel
def test_smollm2_chat_samples_are_readable_and_deterministic(smollm2, tmp_path):
    """The embedded instruct model through its chat template: same text twice, real words."""
    from paqbench.testing import make_run_context

    model, tokenizer = smollm2
    ctx = make_run_context(tokenizer, tmp_path)
    params = {"prompts": ["What is the capital of France?"], "max_new_tokens": 8, "chat": True}
    first, again = _measure(model, ctx, **params), _measure(model, ctx, **params)
    (output,) = first.details["outputs"]
    assert output["encoding"] == "chat template" and first.details["chat_template"]
    assert output["text"] == again.details["outputs"][0]["text"]
    assert "Paris" in output["text"]
