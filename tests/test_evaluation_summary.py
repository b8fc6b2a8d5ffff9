"""``topkdice summary`` over fake evaluations (results.json built from known case scores): the table, Holm
over all rows, the Wilcoxon test across 5 datasets, Friedman's test and the critical-difference diagram."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from nnunet_topkdice.cli import main
from nnunet_topkdice.evaluation.results import comparisons
from nnunet_topkdice.evaluation.statistics import crossed_comparison
from nnunet_topkdice.evaluation.summary import find_results, load_evaluations, summarise

N_CASES = 8
CASES = [f"case{c}" for c in range(N_CASES)]
# per method: the mean gain over the baseline per seed (3 seeds), for dataset index d (added d * 0.002)
GAINS = {"A": [0.03, 0.029, 0.031], "B": [0.02, -0.01, 0.01]}


def _scores(base: float, gains: list[float], dataset: int) -> np.ndarray:
    """(3 seeds, 8 cases) case scores: base + a case effect + the seed's gain + a small interaction."""
    case_effect = np.linspace(-0.05, 0.05, N_CASES)
    interaction = 0.003 * np.sin(np.arange(3 * N_CASES) + dataset).reshape(3, N_CASES)
    return base + case_effect + np.array(gains)[:, None] + dataset * 0.002 + interaction


def _run(scores: np.ndarray) -> dict:
    """A method_result-like dict: one class ``a`` whose Dice per repeat and case is ``scores``."""
    return {
        "repeats": [{"per_case": {c: {"a": {"Dice": float(v)}} for c, v in zip(CASES, row, strict=True)}}
                    for row in scores],
        "prediction_dirs": [f"/pred/{i}" for i in range(len(scores))],
        "mean": {"Dice": float(scores.mean())},
    }  # fmt: skip


def _results(name: str, dataset: int) -> dict:
    runs = {"base": _run(_scores(0.7, [0.0, 0.0, 0.0], 0))}
    runs |= {method: _run(_scores(0.7, gains, dataset)) for method, gains in GAINS.items()}
    return {
        "dataset": {"name": name},
        "runs": runs,
        "comparisons": comparisons(runs, "base", CASES, ["a"], n_boot=2000),
    }


def _write(root: Path, n: int) -> list[Path]:
    """``n`` evaluations, as reproduce lays them out: root/topkdice_<name>/evaluation/results.json."""
    paths = []
    for d in range(n):
        folder = root / f"topkdice_ds{d}" / "evaluation"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_results(f"Dataset{d}", d)))
        paths.append(folder / "results.json")
    return paths


def test_summary_over_three_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _write(tmp_path, 3)
    out = tmp_path / "summary"
    # a results.json, an evaluation folder and a work directory (searched): each found once
    argv = ["summary", str(paths[0]), str(paths[1].parent), str(tmp_path / "topkdice_ds2"), str(tmp_path)]
    assert main([*argv, "-o", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"] == ["Dataset0", "Dataset1", "Dataset2"]
    rows = summary["rows"]
    assert [(r["dataset"], r["method"]) for r in rows] == [(f"Dataset{d}", m) for d in range(3) for m in "AB"]
    # the crossed p values of each dataset's table, then Holm over all six rows
    raw = []
    for d in range(3):
        for gains in GAINS.values():
            differences = _scores(0.7, gains, d) - _scores(0.7, [0.0] * 3, 0)
            raw.append(crossed_comparison(differences).p_value)
    assert [r["p_value"] for r in rows] == pytest.approx(raw)
    holm = multipletests(raw, method="holm")[1]
    assert [r["p_holm"] for r in rows] == pytest.approx(holm)
    assert [r["verdict"] for r in rows] == [
        ("better" if r["mean_difference"] > 0 else "worse") if p < 0.05 else "inconclusive"
        for r, p in zip(rows, holm, strict=True)
    ]
    assert rows[0]["verdict"] == "better" and rows[1]["verdict"] == "inconclusive"
    # fewer than 5 datasets: no test across datasets; 3 methods: Friedman and the diagram
    assert summary["across_datasets"] == []
    friedman = summary["friedman"]
    assert friedman["methods"] == ["base", "A", "B"]
    scores = np.array(friedman["scores"])
    assert friedman["p_value"] == pytest.approx(stats.friedmanchisquare(*scores.T).pvalue)
    assert friedman["mean_ranks"] == {"base": 3.0, "A": 1.0, "B": 2.0}
    assert (out / "critical_difference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the printed table
    assert "| Dataset0 | A vs base | 3 | 8 | +3.00 |" in stdout
    assert stdout.count("| Dataset") == 6
    assert "Friedman test of 3 methods over 3 datasets (mean Dice)" in stdout
    assert "mean ranks (1 = best): A 1.00, B 2.00, base 3.00" in stdout
    assert "Wilcoxon" not in stdout
    assert (out / "summary.md").read_text() == stdout
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0] == ("dataset,method,baseline,n_paired_repeats,n_cases,mean_difference,ci95_low,ci95_high,"
                            "p_value,p_holm,verdict")  # fmt: skip
    assert len(csv_lines) == 7 and csv_lines[1].startswith("Dataset0,A,base,3,8,0.03")
    assert "wrote summary.md, summary.csv, summary.json, critical_difference.png" in stderr


def test_summary_over_five_evaluations_tests_across_datasets(tmp_path: Path) -> None:
    summary = summarise(load_evaluations(find_results(_write(tmp_path, 5))))
    tests = {t["method"]: t for t in summary["across_datasets"]}
    assert set(tests) == {"A", "B"}
    per_dataset = np.array([r["mean_difference"] for r in summary["rows"] if r["method"] == "A"])
    assert tests["A"]["n_datasets"] == 5 and tests["A"]["datasets_better"] == 5
    assert tests["A"]["median_difference"] == pytest.approx(np.median(per_dataset))
    assert tests["A"]["p_value"] == pytest.approx(stats.wilcoxon(per_dataset).pvalue)  # 0.0625: 5 datasets
    assert len(summary["rows"]) == 10
    assert [r["p_holm"] for r in summary["rows"]] == pytest.approx(
        multipletests([r["p_value"] for r in summary["rows"]], method="holm")[1]
    )

    from nnunet_topkdice.evaluation.summary import to_markdown

    markdown = to_markdown(summary)
    assert ("A vs base over 5 datasets: median +3.38 points, 5 of 5 datasets better, Wilcoxon p = 0.062 (datasets "
            "as the unit); with fewer than 6 datasets it cannot reach 0.05") in markdown  # fmt: skip


def test_missing_scikit_posthocs_writes_the_tables_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _write(tmp_path, 3)
    monkeypatch.setitem(sys.modules, "scikit_posthocs", None)  # import raises ImportError
    out = tmp_path / "summary"
    assert main(["summary", str(tmp_path), "-o", str(out)]) == 0
    stderr = capsys.readouterr().err
    assert "needs scikit-posthocs: pip install 'nnunet-topkdice[stats]'" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json", "summary.md"]


def test_friedman_when_every_method_ties(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every method ties on every dataset: scipy's statistic is NaN, which crashed the JSON (exit 1, nothing
    written); and a diagram of an earlier summary in the same folder was left behind."""
    _write(tmp_path, 3)
    out = tmp_path / "summary"
    assert main(["summary", str(tmp_path), "-o", str(out)]) == 0
    assert (out / "critical_difference.png").is_file()
    for d in range(3):
        path = tmp_path / f"topkdice_ds{d}" / "evaluation" / "results.json"
        results = json.loads(path.read_text())
        for run in results["runs"].values():
            run["mean"]["Dice"] = 0.5
        path.write_text(json.dumps(results))
    assert main(["summary", str(tmp_path), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    friedman = json.loads((out / "summary.json").read_text())["friedman"]
    assert friedman["statistic"] is None and friedman["p_value"] is None
    assert friedman["mean_ranks"] == {"base": 2.0, "A": 2.0, "B": 2.0}
    assert ("Friedman test of 3 methods over 3 datasets (mean Dice): chi2 = undefined, p = n/a; mean ranks (1 = "
            "best): base 2.00, A 2.00, B 2.00 (every method ties on every dataset: Friedman's statistic is "
            "undefined)") in stdout  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json", "summary.md"]


def test_the_summary_says_why_friedmans_test_is_missing(tmp_path: Path) -> None:
    """Three methods, but one missing from a dataset (or one mean Dice undefined): the test was left out
    without a word; methods were also taken from the first evaluation only."""
    paths = _write(tmp_path, 3)
    results = json.loads(paths[0].read_text())
    del results["runs"]["B"]
    results["comparisons"] = [c for c in results["comparisons"] if c["method"] != "B"]
    paths[0].write_text(json.dumps(results))
    from nnunet_topkdice.evaluation.summary import to_markdown

    summary = summarise(load_evaluations(find_results([tmp_path])))
    assert summary["friedman"] == {"note": "no Friedman test: it needs 3 or more methods evaluated on every "
                                           "dataset, and 2 are (B from Dataset0 missing)"}  # fmt: skip
    assert "No Friedman test: it needs 3 or more methods" in to_markdown(summary)
    results = json.loads(paths[1].read_text())
    results["runs"]["A"]["mean"]["Dice"] = None
    paths[1].write_text(json.dumps(results))
    paths[0].write_text(json.dumps(_results("Dataset0", 0)))
    summary = summarise(load_evaluations(find_results([tmp_path])))
    assert summary["friedman"] == {"note": "no Friedman test: the mean Dice of A on Dataset1 is undefined"}


def test_a_dataset_evaluated_twice_is_named(tmp_path: Path) -> None:
    paths = _write(tmp_path, 2)
    paths[1].write_text(json.dumps(_results("Dataset0", 1)))  # the same dataset, another evaluation
    from nnunet_topkdice.evaluation.summary import to_markdown

    summary = summarise(load_evaluations(find_results([tmp_path])))
    assert summary["repeated_datasets"] == ["Dataset0"] and summary["friedman"]["statistic"] is not None
    assert "Dataset0 evaluated more than once: each evaluation counts as a dataset in the tests across" in (
        to_markdown(summary)
    )


def test_two_methods_and_duplicate_names(tmp_path: Path) -> None:
    for d in range(2):
        results = _results("Same", d)
        del results["runs"]["B"]
        results["comparisons"] = [c for c in results["comparisons"] if c["method"] == "A"]
        (tmp_path / f"e{d}").mkdir()
        (tmp_path / f"e{d}" / "results.json").write_text(json.dumps(results))
    summary = summarise(load_evaluations(find_results([tmp_path])))
    assert summary["datasets"] == [f"Same ({tmp_path / 'e0'})", f"Same ({tmp_path / 'e1'})"]
    assert summary["friedman"] is None and summary["across_datasets"] == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "missing: no such file or folder"),
        (lambda root: root, "no results.json under this folder"),
        (lambda root: _old(root), "written before the crossed analysis"),
        (lambda root: _text(root, "not json"), "not a readable results.json"),
        (lambda root: _text(root, "{}"), "not a results.json of topkdice evaluate"),
    ],
    ids=["missing", "empty-folder", "old-results", "not-json", "not-results"],
)
def test_bad_input_exits_2(tmp_path: Path, make, message: str, capsys: pytest.CaptureFixture) -> None:
    path = make(tmp_path)
    assert main(["summary", str(path), "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("below", [False, True], ids=["a-file", "below-a-file"])
def test_an_output_that_cannot_be_a_folder_exits_2_before_the_table(
    tmp_path: Path, below: bool, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "e0").mkdir()
    (tmp_path / "e0" / "results.json").write_text(json.dumps(_results("Hippo", 0)))
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    out = blocker / "x" if below else blocker
    assert main(["summary", str(tmp_path / "e0"), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    expected = f"{out} cannot be created: {blocker} is a file" if below else f"{out} is a file; expected a folder"
    assert f"output folder {expected}" in captured.err and captured.out == ""
    assert blocker.read_text() == "keep me"


def _old(root: Path) -> Path:
    results = _results("Old", 0)
    for c in results["comparisons"]:
        del c["verdict"]
    return _text(root, json.dumps(results))


def _text(root: Path, text: str) -> Path:
    path = root / "results.json"
    path.write_text(text)
    return path
