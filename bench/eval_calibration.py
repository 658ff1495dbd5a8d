"""How often `splitwatch eval`'s paired tests call two equal arms different (A/A), per p-value method.

Both arms answer the shipped support test set (220 cases, 10 intents) with the stub model's own
rule (``keyed_answer``), each right 75% of the time at random; per seed, macro-F1 is compared by
the paired bootstrap with the default p-value (the bootstrap distribution of the difference
shifted to zero) and with sacrebleu's (centred absolute differences), and the whole eval
(``evaluate``: every metric, Holm) is run. Prints each method's rejection rate at 0.05 and the
share of runs with every metric not distinguishable.

Usage: python bench/eval_calibration.py [--seeds N] [--bootstrap B]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.service.config import ExperimentConfig
from splitwatch.service.evaluation.compare import batch_macro_f1, evaluate, label_codes
from splitwatch.service.evaluation.dataset import SUPPORT_INTENTS, load_dataset
from splitwatch.service.evaluation.scoring import predicted_label
from splitwatch.service.evaluation.store import CallResult
from splitwatch.service.local.stub_model import KeyedCase, keyed_answer
from splitwatch.stats.paired import paired_bootstrap

EXP = ExperimentConfig.model_validate({
    "key": "support-ft", "model": "support-bot",
    "arms": [{"name": a, "weight": 1, "upstream": {"base_url": f"http://{a}/v1", "model": a}}
             for a in ("base", "finetuned")]})


def main() -> None:
    """Run the A/A repetitions and print the rejection rates."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    ds = load_dataset(SUPPORT_INTENTS)
    labels = ds.labels()
    truth = label_codes([c.label for c in ds.cases], labels)
    rejected = {"shifted": 0, "sacrebleu": 0}
    clean = 0
    for seed in range(args.seeds):
        rng = random.Random(seed)
        results, codes = {}, {}
        for arm in ("base", "finetuned"):
            answers = [keyed_answer(KeyedCase(c.label, None), labels, 0.75, rng) for c in ds.cases]
            codes[arm] = label_codes([predicted_label(a, labels) for a in answers], labels)
            for c, a in zip(ds.cases, answers, strict=True):
                results[(c.id, arm, 0)] = CallResult(c.id, arm, 0, 200, None, rng.lognormvariate(-3, 0.4), 80, 1,
                                                     "stop", a)
        rows = {a: np.column_stack([truth, codes[a]]) for a in codes}
        for method in rejected:
            r = paired_bootstrap(rows["base"], rows["finetuned"], n_samples=args.bootstrap, seed=seed,
                                 statistic=lambda x: float(batch_macro_f1(x[None], len(labels))[0]),
                                 batch_statistic=lambda s: batch_macro_f1(s, len(labels)), p_method=method)
            rejected[method] += r.p_value < 0.05
        res = evaluate(EXP, ds, results, 1, n_bootstrap=args.bootstrap, seed=seed)
        clean += all(c.verdict == "not distinguishable" for c in res.comparisons)
    print(f"{args.seeds} A/A runs of {len(ds.cases)} cases, {args.bootstrap} resamples")
    print("| macro-F1 p-value | rejected at 0.05 |\n|---|---|")
    for method, n in rejected.items():
        print(f"| {method} | {n / args.seeds:.1%} ({n}) |")
    print(f"runs with every metric not distinguishable (Holm): {clean / args.seeds:.1%} ({clean})")


if __name__ == "__main__":
    main()
