"""The Grafana dashboards of this folder, as code, with Grafana's own grafana-foundation-sdk.

    python dashboards/build.py           # regenerate dashboards/splitwatch-*.json
    python dashboards/build.py --check   # exit 1 (naming the file) when a committed JSON differs

Every panel's query is proven against a real Prometheus scraping the real processes
(tests/test_dashboards.py), and every dashboard is checked against the SDK's models of Grafana's
schema. Edit this file, never the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from splitwatch.service.serving.promql import SERIES, model_size_expr

HERE = Path(__file__).resolve().parent
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
EXP = 'experiment=~"$experiment"'
RATE = "[$__rate_interval]"


def _query(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def _legend() -> cb.VizLegendOptions:
    return cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST).placement(
        common.LegendPlacement.BOTTOM).show_legend(True).calcs([])


def _tooltip() -> cb.VizTooltipOptions:
    return cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)


def graph(title: str, unit: str, queries: Iterable[tuple[str, str]], description: str = "",
          width: int = 12, height: int = 8) -> timeseries.Panel:
    """Return a time-series panel of (expression, legend) queries."""
    panel = (timeseries.Panel().title(title).datasource(DS).unit(unit).span(width).height(height)
             .legend(_legend()).tooltip(_tooltip()).line_width(1).fill_opacity(8).show_points(
                 common.VisibilityMode.NEVER))
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(65 + i)))
    return panel.description(description) if description else panel


def band(title: str, value: str, lower: str, upper: str, description: str) -> timeseries.Panel:
    """Return a panel of one series with its interval drawn as a band (upper filled down to lower)."""
    dashed = dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [4, 4]})
    return (graph(title, "percentunit", [(value, "effect"), (lower, "lower bound"), (upper, "upper bound")],
                  description)
            .override_by_name("upper bound", [dm.DynamicConfigValue(id_val="custom.fillBelowTo", value="lower bound"),
                                              dm.DynamicConfigValue(id_val="custom.fillOpacity", value=20), dashed])
            .override_by_name("lower bound", [dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0), dashed]))


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def status(title: str, expr: str, legend: str, mapping: dict[int, tuple[str, str]], description: str,
           width: int = 8, no_value: str = "no data: is the analyzer up?") -> stat.Panel:
    """Return a stat panel whose values map to words and colours (verdict, SRM, guardrails). With no series
    it says so (``no_value``, grey): never a green word for nothing."""
    mappings = [dm.ValueMap(options={str(k): dm.ValueMappingResult(text=t, color=c, index=i)
                                     for i, (k, (t, c)) in enumerate(mapping.items())})]
    return (stat.Panel().title(title).description(description).datasource(DS).span(width).height(5)
            .with_target(_query(expr, legend)).mappings(mappings)
            .thresholds(_thresholds((None, "text")))
            .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)).no_value(no_value))


def _datasource() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _label_variable(name: str, label: str, query: str, multi: bool = True) -> db.QueryVariable:
    variable = (db.QueryVariable(name).label(label).datasource(DS).query(query)
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))
    return variable.multi(True).include_all(True).all_value(".*") if multi else variable.multi(False)


def _dashboard(uid: str, title: str, refresh: str, since: str, description: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(description).tags(["splitwatch"]).refresh(refresh)
            .time(since, "now").timezone("utc").tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .with_variable(_datasource()))


def _shadow_pairs() -> str:
    return f"sum by (candidate) (rate(splitwatch_shadow_pairs_total{{{EXP}}}{RATE}))"


def _shadow_errors(side: str) -> str:
    return f'sum by (candidate) (rate(splitwatch_shadow_pairs_total{{{EXP},{side}="error"}}{RATE}))'


def proxy_dashboard() -> db.Dashboard:
    """Return the proxy's dashboard: traffic, errors, latency, tokens and event delivery per arm."""
    requests = f"sum by (arm) (rate(splitwatch_requests_total{{{EXP}}}{RATE}))"
    errors = f'sum by (arm) (rate(splitwatch_requests_total{{{EXP},status=~"5.."}}{RATE}))'
    left = f'sum by (arm) (rate(splitwatch_requests_total{{{EXP},status="499"}}{RATE}))'
    d = _dashboard("splitwatch-proxy", "splitwatch proxy", "30s", "now-6h",
                   "Requests, errors, latency and tokens per arm; the proxy's overhead and its event delivery.")
    d = d.with_variable(_label_variable("experiment", "Experiment", "label_values(splitwatch_requests_total, "
                                                                    "experiment)"))
    panels = [
        graph("Requests per second by arm", "reqps", [(requests, "{{arm}}")]),
        # an arm without errors shows 0, not "No data": errors or 0 x the arm's requests, per arm
        graph("Error rate by arm (5xx, as SplitwatchArmErrorRateHigh counts)", "percentunit",
              [(f"({errors} or 0 * {requests}) / {requests}", "{{arm}} 5xx"),
               (f"({left} or 0 * {requests}) / {requests}", "{{arm}} client left (499)")],
              "Share of requests answered 5xx per arm, the alert's definition; the share the client left "
              "before the answer (499) is drawn apart: it is not the endpoint's failure. 0 on healthy traffic."),
        graph("Upstream latency p50 by arm", "s", [(
            f"histogram_quantile(0.5, sum by (arm, le) (rate(splitwatch_request_duration_seconds_bucket{{{EXP}}}"
            f"{RATE})))", "{{arm}}")]),
        graph("Upstream latency p95 by arm", "s", [(
            f"histogram_quantile(0.95, sum by (arm, le) (rate(splitwatch_request_duration_seconds_bucket{{{EXP}}}"
            f"{RATE})))", "{{arm}}")]),
        graph("Time to first token p95 by arm (streams)", "s", [(
            f"histogram_quantile(0.95, sum by (arm, le) (rate(splitwatch_time_to_first_token_seconds_bucket"
            f"{{{EXP}}}{RATE})))", "{{arm}}")]),
        graph("Completion tokens per request by arm", "short", [(
            f'sum by (arm) (rate(splitwatch_tokens_total{{{EXP},kind="completion"}}{RATE})) / '
            f'sum by (arm) (rate(splitwatch_requests_total{{{EXP},status="200"}}{RATE}))', "{{arm}}")]),
        graph("Upstream errors by arm and reason", "reqps", [(
            f"sum by (arm, reason) (rate(splitwatch_upstream_errors_total{{{EXP}}}{RATE})) or vector(0)",
            "{{arm}} {{reason}}")]),
        graph("Requests outside the experiment by reason", "reqps", [(
            f"sum by (reason) (rate(splitwatch_unassigned_requests_total{{{EXP}}}{RATE})) or vector(0)",
            "{{reason}}")]),
        graph("Outcomes per second by metric", "reqps", [(
            f"sum by (metric) (rate(splitwatch_outcomes_total{{{EXP}}}{RATE}))", "{{metric}}")]),
        graph("Proxy overhead p99", "s", [(
            f"histogram_quantile(0.99, sum by (le) (rate(splitwatch_proxy_overhead_seconds_bucket{RATE})))",
            "p99")]),
        graph("Kafka reachable (lowest across workers)", "short", [("min(splitwatch_kafka_connected)", "events"),
                                                                  ("min(splitwatch_control_connected)", "control")]),
        graph("Events in memory and on disk", "short", [
            ("sum(splitwatch_events_queued) + sum(splitwatch_events_spooled)", "waiting")]),
        graph("Events sent to Kafka per second", "short", [
            (f"sum(rate(splitwatch_events_sent_total{RATE}))", "sent")]),
        graph("Events dropped per second (must stay 0)", "short", [(
            f"sum by (reason) (rate(splitwatch_events_dropped_total{RATE})) or vector(0)", "{{reason}}")]),
        # shadow traffic (docs/shadow.md): the same requests answered by the control and by the candidate
        graph("Shadow pairs: error rate, control and candidate on the same requests", "percentunit", [
            (f"({_shadow_errors('control')} or 0 * {_shadow_pairs()}) / {_shadow_pairs()}",
             "control (vs {{candidate}})"),
            (f"({_shadow_errors('shadow')} or 0 * {_shadow_pairs()}) / {_shadow_pairs()}", "{{candidate}} (shadow)")],
              "Of the requests mirrored to the shadow candidate, the share each side failed (the client saw only the "
              "control's answer). Alert: SplitwatchShadowCandidateErrorsHigh."),
        graph("Shadow calls per second, and those skipped by the budget", "reqps", [
            (f"sum by (candidate) (rate(splitwatch_shadow_calls_total{{{EXP}}}{RATE}))", "{{candidate}}"),
            (f"sum by (reason) (rate(splitwatch_shadow_skipped_total{{{EXP}}}{RATE})) or vector(0)",
             "skipped: {{reason}}")]),
    ]
    for p in panels:
        d = d.with_panel(p)
    return d


def kpi_dashboard() -> db.Dashboard:
    """Return the experiments' dashboard: verdict, SRM, guardrails, KPIs and effects with intervals, rollout."""
    metric = 'metric=~"$metric"'
    d = _dashboard("splitwatch-kpis", "splitwatch experiment KPIs", "1m", "now-7d",
                   "The live analysis: the verdict, sample ratio, guardrails, KPI values, effects with their "
                   "intervals, p-values, and the rollout.")
    # one experiment, one metric and one arm at a time: the band's fill joins one upper to one lower bound
    d = (d.with_variable(_label_variable("experiment", "Experiment", "label_values(splitwatch_units, experiment)",
                                         multi=False))
         .with_variable(_label_variable("metric", "Metric", 'label_values(splitwatch_metric_mean{experiment=~'
                                                             '"$experiment"}, metric)', multi=False))
         .with_variable(_label_variable("arm", "Treatment arm", 'label_values(splitwatch_effect_relative'
                                                                '{experiment=~"$experiment"}, arm)', multi=False))
         .with_variable(_label_variable("dimension", "Segment dimension", 'label_values(splitwatch_segment_units'
                                                                        '{experiment=~"$experiment"}, dimension)',
                                        multi=False))
         .with_variable(_label_variable("segment", "Segment", 'label_values(splitwatch_segment_units'
                                                              '{experiment=~"$experiment", dimension=~"$dimension"}, '
                                                              'segment)')))
    seg = 'dimension=~"$dimension",segment=~"$segment"'
    panels = [
        status("Verdict", f"splitwatch_verdict{{{EXP}}}", "{{experiment}}",
               {2: ("ship", "green"), 1: ("keep running", "orange"), 0: ("roll back", "red"),
                -1: ("invalid", "purple")},
               "The live analysis' verdict from the metrics' roles (docs/analyzer.md); the weekly report says why."),
        status("Sample ratio", f"min by (experiment) (splitwatch_srm_p_value{{{EXP}}}) < bool 0.001",
               "{{experiment}}", {0: ("split as configured", "green"), 1: ("MISMATCH", "red")},
               "Sequential sample ratio test (p < 0.001 is a mismatch): assignment or logging is broken."),
        status("Guardrails", f"max by (metric) (splitwatch_guardrail_breached{{{EXP}}})",
               "{{metric}}", {0: ("holding", "green"), 1: ("BREACHED", "red")},
               "A guardrail is breached when its harm's lower bound is above its margin. No series: no "
               "guardrail was tested (none configured, too few units, or no analyzer running).",
               no_value="no guardrail tested"),
        graph("Units per arm", "short", [(f"sum by (arm) (splitwatch_units{{{EXP}}})", "{{arm}}")]),
        graph("KPI value per arm", "short", [(f"splitwatch_metric_mean{{{EXP},{metric}}}", "{{arm}} {{metric}}")]),
        band("Relative effect of $arm on $metric ($experiment), with its interval",
             f'splitwatch_effect_relative{{{EXP},{metric},arm="$arm"}}',
             f'splitwatch_effect_relative_lower{{{EXP},{metric},arm="$arm"}}',
             f'splitwatch_effect_relative_upper{{{EXP},{metric},arm="$arm"}}',
             "The relative effect against the control with the test's own interval (always valid when "
             "sequential): the band excludes 0 exactly when the effect is significant."),
        graph("p-value (adjusted, always valid)", "short", [(
            f"min by (arm, metric) (splitwatch_p_value{{{EXP},{metric}}})", "{{arm}} {{metric}}")]),
        graph("By segment: $metric's effect (primary) or harm (guardrail) per $dimension value", "short", [(
            f"splitwatch_segment_effect{{{EXP},{metric},{seg}}}", "{{segment}}: {{arm}}")],
            "Each segment's effect against the control (a guardrail: its harm), users counted in the segment of "
            "their first request (docs/segments.md). Segments never change the verdict unless "
            "analyzer.segments.affect_verdict says so."),
        graph("By segment: adjusted p-value (correction within the configured scope)", "short", [(
            f"splitwatch_segment_p_value{{{EXP},{metric},{seg}}}", "{{segment}}: {{arm}}")]),
        graph("By segment: users per arm", "short", [(
            f"splitwatch_segment_units{{{EXP},{seg}}}", "{{segment}}: {{arm}}")]),
        graph("Sample ratio mismatch p-value (alert below 0.001)", "short", [(
            f"splitwatch_srm_p_value{{{EXP}}}", "{{experiment}}")]),
        graph("Events ingested into the lake per second", "short", [(
            f"sum(rate(splitwatch_analyzer_events_ingested_total{RATE}))", "ingested")]),
        graph("Invalid messages per second (must stay 0)", "short", [(
            f"sum(rate(splitwatch_analyzer_invalid_events_total{RATE})) or vector(0)", "invalid")]),
        graph("Seconds since the last analysis", "s", [(
            f"time() - max by (experiment) (splitwatch_last_analysis_timestamp_seconds{{{EXP}}})", "{{experiment}}")]),
        graph("Rollout: coverage in force (proxies: highest of their workers; analyzer: the control topic)",
              "percentunit", [(f"splitwatch_experiment_coverage{{{EXP}}}", "{{experiment}} ({{job}})")],
              "The share of units admitted to the experiment. The guard raises it step by step (rollout.steps); "
              "proxies and the analyzer's view should agree within seconds."),
        graph("Rollout: paused (1) or running (0)", "short", [(
            f"splitwatch_experiment_paused{{{EXP}}}", "{{experiment}} ({{job}})")],
            "Proxies report 1 only when every live worker applies the pause. A paused experiment serves everyone "
            "the control arm until a person resumes it."),
        graph("Rollout: state changes and rollbacks in the last hour", "short", [
            (f"sum by (experiment, action, actor) (increase(splitwatch_control_changes_total{{{EXP}}}[1h]))",
             "{{experiment}} {{action}} by {{actor}}"),
            (f"sum by (experiment, reason) (increase(splitwatch_rollbacks_total{{{EXP}}}[1h]))",
             "{{experiment}} rollback: {{reason}}")],
            "Ramp steps, pauses and resumes read from the control topic, and the guard's automatic rollbacks by "
            "reason (guardrail, srm, failures). The report's rollout timeline says who and why."),
    ]
    for p in panels:
        d = d.with_panel(p)
    return d


def drift_dashboard() -> db.Dashboard:
    """Return the drift detector's dashboard: verdicts, p-values and effect sizes per feature."""
    d = _dashboard("splitwatch-drift", "splitwatch prompt and answer drift", "1m", "now-7d",
                   "Prompt-feature drift against the reference, per arm and feature, and each arm's answers "
                   "against its own first answers (docs/drift.md).")
    d = d.with_variable(_label_variable("experiment", "Experiment", "label_values(splitwatch_drift_reference_size, "
                                                                    "experiment)"))
    panels = [
        graph("Drift detected (1) per arm and detector", "short", [(
            f"max by (arm, detector) (splitwatch_drift_detected{{{EXP}}})", "{{arm}} {{detector}}")]),
        graph("Adjusted p-value per feature (all arms)", "short", [(
            f'min by (feature) (splitwatch_drift_p_value{{{EXP},arm="all"}})', "{{feature}}")]),
        graph("Effect per feature (PSI; language: total variation)", "short", [(
            f'max by (feature) (splitwatch_drift_score{{{EXP},arm="all"}})', "{{feature}}")]),
        graph("Features that drifted (1), all arms", "short", [(
            f'max by (feature) (splitwatch_drift_feature_drifted{{{EXP},arm="all"}})', "{{feature}}")],
            "1 when the feature's adjusted p-value is below splitwatch_drift_p_value_threshold and its effect "
            "reaches splitwatch_drift_effect_threshold."),
        graph("Effect over its threshold (1 = large enough), all arms", "short", [(
            f'max by (experiment, feature) (splitwatch_drift_score{{{EXP},arm="all"}}) / on (experiment, feature) '
            f"max by (experiment, feature) (splitwatch_drift_effect_threshold{{{EXP}}})", "{{feature}}")]),
        graph("Language shares, all arms", "percentunit", [(
            f'max by (language) (splitwatch_drift_language_share{{{EXP},arm="all"}}) > 0', "{{language}}")]),
        graph("Detector stage (0 reference, 1 first window, 2 judging)", "short", [(
            f"max by (experiment) (splitwatch_drift_stage{{{EXP}}})", "{{experiment}}")]),
        graph("Answers: output drift detected (1) per arm", "short", [(
            f"max by (arm) (splitwatch_output_drift_detected{{{EXP}}})", "{{arm}}")]),
        graph("Answers: refusals, empty and truncated per arm", "percentunit", [(
            f"max by (arm, kind) (splitwatch_output_share{{{EXP}}})", "{{arm}} {{kind}}")]),
        graph("Answers: median completion tokens per arm", "short", [(
            f"max by (arm) (splitwatch_output_completion_tokens_median{{{EXP}}})", "{{arm}}")]),
        graph("Answers: finish reasons per arm", "percentunit", [(
            f"max by (arm, reason) (splitwatch_output_finish_reason_share{{{EXP}}}) > 0", "{{arm}} {{reason}}")]),
        graph("Window size per arm", "short", [(
            f"max by (arm) (splitwatch_drift_window_size{{{EXP}}})", "{{arm}}")]),
        graph("Reference size", "short", [(
            f"max by (experiment) (splitwatch_drift_reference_size{{{EXP}}})", "{{experiment}}")]),
        graph("Exposures watched per second", "short", [(
            f"sum by (experiment) (rate(splitwatch_drift_exposures_total{{{EXP}}}{RATE}))", "{{experiment}}")]),
    ]
    for p in panels:
        d = d.with_panel(p)
    return d


def serving_dashboard() -> db.Dashboard:
    """Return the serving side per arm: GPU memory and utilisation, KV cache, queue, decoding speed, model size
    (the model servers' and DCGM's own series, joined through splitwatch_upstream_info: docs/serving.md)."""
    d = _dashboard("splitwatch-serving", "splitwatch serving", "30s", "now-6h",
                   "What each arm costs to serve, from its model servers' (vLLM, TGI) and GPUs' (DCGM exporter) own "
                   "metrics, joined per arm through splitwatch_upstream_info (docs/serving.md).")
    d = d.with_variable(_label_variable("experiment", "Experiment", "label_values(splitwatch_upstream_info, "
                                                                    "experiment)"))
    panels = [graph(f"{s.title} by arm", s.unit, [(s.expr(EXP), "{{arm}} ({{role}})")], f"From {s.sources}.")
              for s in SERIES]
    panels.append(graph("Model size by arm (parameters, as configured)", "short", [
        (model_size_expr("parameters", EXP), "{{arm}} {{model}} ({{dtype}})")],
        "upstream.serving.model_size in the config; the report also reads the servers' /v1/models."))
    panels.append(graph("Model weights by arm (bytes, as configured)", "bytes", [
        (model_size_expr("bytes", EXP), "{{arm}} {{model}} ({{dtype}})")]))
    for p in panels:
        d = d.with_panel(p)
    return d


DASHBOARDS = {"splitwatch-proxy.json": proxy_dashboard, "splitwatch-kpis.json": kpi_dashboard,
              "splitwatch-serving.json": serving_dashboard,
              "splitwatch-drift.json": drift_dashboard}


def render(build: db.Dashboard) -> str:
    """Return a dashboard as the JSON Grafana imports (stable key order, trailing newline)."""
    return json.dumps(json.loads(json.dumps(build.build(), cls=JSONEncoder)), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or, with --check, compare) every dashboard; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed JSON instead of writing it")
    args = ap.parse_args(argv)
    stale = []
    for name, make in DASHBOARDS.items():
        text, path = render(make()), HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run: python dashboards/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
