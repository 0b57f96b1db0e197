"""summary.md: G1/G2/G3 as mean ± sample std over runs."""

from __future__ import annotations

from modmerge.reports.pareto import summary_markdown


def _solution(cost: float, test: float) -> dict:
    return {"grouping": [[0]], "generation": 0, "storage_cost": cost, "validation": {"mean": test, "per_task": {"a": test}},
            "test": {"mean": test, "per_task": {"a": test}}}


def _run(cost: float, test: float) -> dict:
    sol = _solution(cost, test)
    return {"seed": 0, "solutions": [sol], "representatives": {"G1": sol, "G2": None, "G3": sol},
            "evaluation_cost": {"real_evaluations": 5, "task_runs": 4, "task_runs_naive": 5, "modules_built": 3,
                                "modules_naive": 9, "layer_forwards": 0, "layer_forwards_naive": 0, "prefix_hits": 0},
            "test_cost": None}


def test_representatives_are_mean_and_sample_std_over_runs():
    payload = {
        "tasks": ["a"], "units": ["u0"], "backbone": {"name": "tiny", "self_pretrained": True},
        "recipe": {"method": "ties", "budget": 5, "population": 2, "granularity": "component",
                   "quantization": {"mode": "conditional"}},
        "runs": [_run(0.4, 0.70), _run(0.6, 0.80)], "bars": {},
    }
    text = summary_markdown(payload, [])
    assert "2 run(s) (mean ± sample std over runs)" in text
    # C 0.5 ± 0.1414 (n - 1), test 75.0 ± 7.1; G2 qualified in no run
    assert "| MERGE-ties (G1) | 0.5000 ± 0.1414 | 75.0 ± 7.1 | 75.0 ± 7.1 |" in text
    assert "Test metrics of the Pareto set" not in text  # no run has its test cost


def _payload(runs: list[dict]) -> dict:
    return {"tasks": ["a"], "units": ["u0"], "backbone": {"name": "tiny", "self_pretrained": True},
            "recipe": {"method": "ties", "budget": 5, "population": 2, "granularity": "component",
                       "quantization": {"mode": "conditional"}},
            "runs": runs, "bars": {}}


def test_the_search_cost_sums_only_the_runs_whose_work_was_counted():
    counted, uncounted = _run(0.4, 0.7), {**_run(0.6, 0.8), "evaluation_cost": None}
    text = summary_markdown(_payload([counted, uncounted, counted]), [])
    assert ("Evaluation cost of the search (test metrics apart over the 2 of 3 runs whose work was counted): "
            "10 real evaluations, 8 task runs against 10") in text
    text = summary_markdown(_payload([uncounted]), [])
    assert "Evaluation cost of the search: not recorded for these runs." in text and "real evaluations" not in text


def test_a_representative_without_its_bar_says_no_baselines_were_given():
    runs = [_run(0.4, 0.7)]  # G2 is None in every run
    without = summary_markdown({**_payload(runs), "bars": {"base_method_validation": 0.6,
                                                           "best_baseline_validation": None}}, [])
    assert "| MERGE-ties (G2) | - | - | no baselines given |" in without
    beaten = summary_markdown({**_payload(runs), "bars": {"base_method_validation": 0.6,
                                                          "best_baseline_validation": 0.9}}, [])
    assert "| MERGE-ties (G2) | - | - | none qualified |" in beaten
