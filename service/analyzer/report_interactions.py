"""What the report says about interactions with concurrent experiments, for every format."""

from __future__ import annotations

from typing import Any

from .interactions import InteractionResult
from .report import Report
from .report_format import fmt_count, fmt_p

INTERACTION_HEADER = ["other experiment", "primary metric", "users in both", "Wald chi-square (df)", "p",
                      "adjusted p", "finding"]
INTERACTION_NOTE = ("Over the period's users that another experiment also took: does this experiment's effect "
                    "depend on their arm there? Wald test of the arm x arm interaction (cell variances), "
                    "corrected over every primary and other experiment.")


def interaction_rows(rep: Report) -> list[list[str]]:
    """Return the interactions table's rows."""
    return [[i.other, i.metric, fmt_count(i.units), f"{i.statistic:.3g} ({i.df})", fmt_p(i.p_value),
             fmt_p(i.p_adjusted), "interaction" if i.significant else "none shown"] for i in rep.interactions]


def _words(i: InteractionResult) -> str:
    return (f"the effect on {i.metric} depends on the arm users have in experiment {i.other} (Wald chi-square "
            f"{i.statistic:.3g} on {i.df} df, adjusted p = {fmt_p(i.p_adjusted)}, {fmt_count(i.units)} users in "
            "both)")


def interaction_banners(rep: Report) -> list[tuple[str, str]]:
    """Return a warning for each significant interaction."""
    return [("warning", f"Interaction with a concurrent experiment: {_words(i)}. Neither experiment's effect "
                        "holds alone; read them together.") for i in rep.interactions if i.significant]


def interactions_json(rep: Report) -> list[dict[str, Any]]:
    """Return the interactions as JSON-ready data."""
    return [{"other_experiment": i.other, "metric": i.metric, "units": i.units, "statistic": i.statistic,
             "df": i.df, "p_value": i.p_value, "p_value_adjusted": i.p_adjusted, "significant": i.significant,
             "contrasts": [{"arm": a, "other_arm": b, "contrast": c} for (a, b), c in i.contrasts.items()]}
            for i in rep.interactions]
