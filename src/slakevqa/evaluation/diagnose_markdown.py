"""``diagnostics.md``: the diagnostics summary as a short page a researcher reads top to bottom.

Input is the dict :func:`slakevqa.evaluation.diagnose.run_diagnose` writes to
``diagnostics.json``; every number here is one of its values. A page opens::

    # Diagnostics (27 questions)

    ## Yes/no bias
    | gold \\ predicted | yes | no | other | accuracy |
    | --- | --- | --- | --- | --- |
    | yes | 5 | 1 | 0 | 0.833 |
"""

from __future__ import annotations

from slakevqa.escaping import md_cell, md_text

SHOWN = 5  # examples per section on the page; diagnostics.json keeps more


def fmt(value: object) -> str:
    """Numbers to 3 decimals, None as ``n/a``, anything else as text.

    >>> fmt(0.12345), fmt(None), fmt(7)
    ('0.123', 'n/a', '7')
    """
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    r"""A Markdown table; numbers pass through :func:`fmt`, text (questions, answers: data) through ``md_text``.

    >>> table(["q"], [["<b>|x"]])[-1]
    '| &lt;b&gt;\\|x |'
    """
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(md_cell(md_text(c) if isinstance(c, str) else fmt(c)) for c in row) + " |")
    return lines


def yes_no_section(yn: dict) -> list[str]:
    """Confusion with per-class accuracy, yes rates, margin summary and tiny-margin shares."""
    lines = ["## Yes/no bias", ""]
    if not yn["questions"]:
        return lines + ["No CLOSED question has a yes/no gold answer.", ""]
    rows = [[g, *yn["confusion"][g].values(), yn["accuracy"][g]] for g in ("yes", "no")]
    lines += table(["gold \\ predicted", "yes", "no", "other", "accuracy"], rows) + [""]
    lines.append(f"Predicted yes {fmt(yn['predicted_yes_rate'])} vs gold yes {fmt(yn['gold_yes_rate'])} "
                 f"(bias {fmt(yn['yes_bias'])}); balanced accuracy {fmt(yn['accuracy']['balanced'])}.")
    margins = yn["margins"]
    if margins["scored"]:
        tiny = ", ".join(f"|margin| < {t}: {fmt(c['share'])}" for t, c in margins["tiny"].items())
        signed = margins["signed"]
        lines.append(f"Margin score(yes) - score(no) over {margins['scored']} questions: median "
                     f"{fmt(signed['median'])}, p10 {fmt(signed['p10'])}, p90 {fmt(signed['p90'])}; {tiny}.")
    return lines + [""]


def generic_section(generic: dict) -> list[str]:
    """Generic-answer rate of OPEN predictions, by word, with a few examples."""
    lines = ["## Generic answers (OPEN)", "",
             f"{generic['generic']} of {generic['open_questions']} OPEN answers are generic "
             f"(rate {fmt(generic['rate'])}); words: {md_text(generic['by_word'] or 'none')}.", ""]
    examples = [[e["qid"], e["question"], e["answer"], e["prediction"]] for e in generic["examples"][:SHOWN]]
    return lines + (table(["qid", "question", "gold", "prediction"], examples) + [""] if examples else [])


def kg_section(kg: dict) -> list[str]:
    """With vs without KG facts on kvqa questions: paired scores and changed answers."""
    lines = ["## KG context ablation (kvqa)", "",
             f"{kg['with_facts']} of {kg['kvqa_questions']} kvqa questions get KG facts; the run used "
             f"triples_mode={kg['run_triples_mode']}, the second pass {kg['other_triples_mode']}.", ""]
    if kg.get("note"):
        lines += [f"Note: {kg['note']}.", ""]
    if not kg.get("questions"):
        return lines
    rows = [[name, c["with"], c["without"], c["delta"], f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]",
             c["fixed"], c["broken"]] for name, c in kg["scores"].items()]
    lines += table(["scorer", "with KG", "without", "delta", "95% CI", "fixed", "broken"], rows) + [""]
    lines.append(f"{kg['changed_answers']} of {kg['questions']} answers changed.")
    changed = [[e["qid"], e["question"], e["answer"], e["with_kg"], e["without_kg"]] for e in kg["examples"][:SHOWN]]
    return lines + ([""] + table(["qid", "question", "gold", "with KG", "without"], changed) if changed else []) + [""]


def routing_section(routing: dict) -> list[str]:
    """Route counts, gold answers missing from the candidates, OPEN/CLOSED disagreements, vocab routes."""
    missing, disagree, vocab = (routing["gold_not_in_candidates"], routing["answer_type_disagreement"],
                                routing["vocab_routed"])
    lines = ["## Routing", "", f"Routes: {md_text(routing['routes'])}.",
             f"Gold answer not among the candidates: {missing['count']} of {missing['of']} CLOSED questions "
             f"(by route {md_text(missing['by_route'] or 'none')}; {missing['exact_reachable']} still reachable under exact).",
             f"SLAKE answer_type vs the question-only classifier disagree on {disagree['count']} questions: "
             f"{md_text(disagree['matrix'])}.",
             f"Routed to the closed vocabulary: {vocab['count']} ({vocab['gold_in_vocab']} with the gold answer "
             f"in it, {vocab['correct']} correct).", ""]
    items = [[i["qid"], i["question"], i["answer"], ", ".join(i["candidates"])] for i in missing["items"][:SHOWN]]
    return lines + (table(["qid", "question", "gold", "candidates"], items) + [""] if items else [])


def slices_section(errors: dict) -> list[str]:
    """``exact`` accuracy and miss counts per slice value; the misses themselves live in the JSON file."""
    rows = [[name, value, cell["questions"], cell["errors"], cell["exact"]]
            for name, values in errors["slices"].items() for value, cell in values.items()]
    return (["## Errors by slice", "", f"Worst {errors['limit']} misses per value in `{errors['file']}`.", ""]
            + table(["slice", "value", "questions", "errors", "exact"], rows) + [""])


def inputs_section(prompts: dict, masks: dict) -> list[str]:
    """Prompt statistics and what mask debugging shows."""
    tokens = prompts["tokens"]
    lines = ["## Inputs", "",
             f"Prompts: {prompts['written']} in `{prompts['file']}`, tokens mean {fmt(tokens['mean'])} / max "
             f"{fmt(tokens['max'])} (image included), {prompts['truncated']} truncated, "
             f"{prompts['with_kg_facts']} with KG facts, {prompts['differ_from_run']} differ from the run's prompt."]
    if masks["mode"] == "none":
        return lines + [f"Masks: {masks['note']}.", ""]
    return lines + [f"Masks ({masks['mode']}): {masks['written']} examples in `{masks['dir']}/`, "
                    f"status {masks['status']}.", ""]


def render_markdown(summary: dict) -> str:
    """The whole page."""
    lines = [f"# Diagnostics ({summary['questions']} questions)", ""]
    lines += yes_no_section(summary["yes_no"])
    lines += generic_section(summary["generic_answers"])
    lines += kg_section(summary["kg_ablation"])
    lines += routing_section(summary["routing"])
    lines += slices_section(summary["errors_by_slice"])
    lines += inputs_section(summary["prompts"], summary["mask_debug"])
    return "\n".join(lines).rstrip() + "\n"
