"""Each report as a :class:`TrackerRecord`, built from its JSON (the same figures the files hold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .record import TrackerRecord


def _figures(record: TrackerRecord, prefix: str, figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        record.add_metric(f"{prefix}.{key}", value)  # numbers only: nested tables and texts stay in the files


def eval_record(report: dict[str, Any], models: dict[str, str], artifacts: list[Path]) -> TrackerRecord:
    """Return the offline eval's record: arms and models, the dataset's hash, per-arm figures, every
    comparison's difference, interval and corrected p-value."""
    rec = TrackerRecord(report["experiment"], "offline_eval", f"eval {report['experiment']}",
                        artifacts=list(artifacts))
    rec.params.update({"arms": ",".join(report["arms"]), "control": report["control"], "task": report["task"],
                       "dataset_sha256": report["dataset"]["sha256"], "cases": str(report["cases"]),
                       "alpha": str(report["alpha"]), "n_bootstrap": str(report.get("n_bootstrap")),
                       **{f"model.{a}": m for a, m in models.items()}})
    for arm, figures in report["per_arm"].items():
        _figures(rec, arm, figures)
    for c in report["comparisons"]:
        key = f"{c['arm']}_vs_{c['against']}.{c['metric']}"
        for field in ("difference", "low", "high", "p_value", "p_adjusted"):
            rec.add_metric(f"{key}.{field}", c.get(field))
    for s in report.get("slices", []):
        rec.add_metric(f"slice.{s['key']}={s['value']}.{s['arm']}.{s['metric']}.difference", s.get("difference"))
    rec.tags["splitwatch.verdict"] = " | ".join(report.get("verdict", []))[:5000]
    return rec


def online_record(report: dict[str, Any], models: dict[str, str], artifacts: list[Path]) -> TrackerRecord:
    """Return the online report's record: the period and arms, units per arm, each metric's value per arm,
    its effects with their intervals and p-values, and the decision."""
    rec = TrackerRecord(report["experiment"], "online_report",
                        f"report {report['experiment']} {report['from']}..{report['to']}", artifacts=list(artifacts))
    rec.params.update({"period": f"{report['from']}..{report['to']}", "from": str(report["from"]),
                       "to": str(report["to"]), "phase": str(report["phase"]), "method": str(report["method"]),
                       "arms": ",".join(report["units"]), **{f"model.{a}": m for a, m in models.items()}})
    for arm, n in report["units"].items():
        rec.add_metric(f"{arm}.units", n)
    for r in report["results"]:
        m, arm = r["metric"], r["arm"]
        rec.add_metric(f"{m}.{arm}.value", r.get("treatment_value"))
        rec.add_metric(f"{m}.{r['control']}.value", r.get("control_value"))
        key = f"{m}.{arm}_vs_{r['control']}"
        rec.add_metric(f"{key}.absolute_effect", r.get("absolute_effect"))
        for name, ci in (("absolute", r.get("absolute_ci")), ("relative", r.get("relative_ci"))):
            if isinstance(ci, (list, tuple)) and len(ci) == 2:
                rec.add_metric(f"{key}.{name}_low", ci[0])
                rec.add_metric(f"{key}.{name}_high", ci[1])
        rec.add_metric(f"{key}.relative_effect", r.get("relative_effect"))
        rec.add_metric(f"{key}.p_value_adjusted", r.get("p_value_adjusted"))
    verdict = report.get("verdict") or {}
    rec.tags["splitwatch.decision"] = str(verdict.get("decision"))
    rec.tags["splitwatch.headline"] = str(verdict.get("headline"))[:5000]
    return rec


def training_record(report: dict[str, Any], experiment: str, artifacts: list[Path]) -> TrackerRecord:
    """Return the training report's record: each run's findings, and its curves with their steps."""
    rec = TrackerRecord(experiment, "training", f"training {experiment}", artifacts=list(artifacts))
    rec.params["runs"] = ",".join(r["name"] for r in report["runs"])
    for r in report["runs"]:
        name = r["name"]
        for k, v in r["params"].items():
            rec.params[f"{name}.{k}"] = v
        for field in ("final_train_loss", "best_eval_loss", "best_step", "last_eval_loss", "last_eval_step",
                      "overfitting_from", "eval_rise", "gap_at_best", "gap_at_last", "diverged_at", "tail_change"):
            rec.add_metric(f"{name}.{field}", r.get(field))
        rec.add_metric(f"{name}.spikes", len(r.get("spikes", [])))
        for series, points in r.get("curves", {}).items():
            rec.curves[f"{name}.{series}"] = [(int(s), v) for s, v in points if v is not None]
        rec.tags[f"splitwatch.verdict.{name}"] = r["verdict"][:5000]
    return rec


def data_record(report: dict[str, Any], experiment: str, artifacts: list[Path]) -> TrackerRecord:
    """Return the data report's record: the files, the checks' thresholds and every count."""
    rec = TrackerRecord(experiment, "data", f"data {experiment}", artifacts=list(artifacts))
    rec.params.update({f"file.{k}": str(v) for k, v in report["files"].items()})
    rec.params.update({f"option.{k}": str(v) for k, v in report["options"].items()})
    for k, v in report["counts"].items():
        rec.add_metric(k, v)
    rec.add_metric("contaminated_share", report.get("contaminated_share"))
    rec.add_metric("imbalance_ratio", report.get("imbalance_ratio"))
    rec.add_metric("label_entropy", report.get("label_entropy"))
    return rec
