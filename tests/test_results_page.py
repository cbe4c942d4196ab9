"""The results page and the README's headline are what the reports say: generated, never typed by hand."""

from conftest import REPO

from benchmarks import results_page


def test_the_results_page_is_generated_from_the_reports():
    assert (REPO / "docs" / "results.md").read_text() == results_page.render(), (
        "docs/results.md differs from reports/: run python -m benchmarks.results_page"
    )


def test_the_readme_headline_is_the_benchmark_report(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert results_page.HEADLINE.search(readme), "the README has no headline block"
    assert results_page.with_headline(readme) == readme
    (tmp_path / "benchmark.json").write_text(
        '{"pipeline": {"dvc_repro_seconds": 600, "test": {"mae": {"value": 4.0, "ci_low": 3.9, "ci_high": 4.1}}},'
        ' "hardware": {"cpu": "X", "cpu_cores": 4, "gpu": null}}'
    )
    assert "test MAE of 4.00 years [3.90, 4.10] in a 10.0-minute" in results_page.with_headline(readme, tmp_path)
    (tmp_path / "benchmark.json").write_text(
        '{"pipeline": {"dvc_repro_seconds": 600, "test": {"mae": {"value": 4.0, "ci_low": 3.9, "ci_high": 4.1},'
        ' "intervals": {"level": 0.9, "coverage": 0.8967, "width": 15.04}}},'
        ' "hardware": {"cpu": "X", "cpu_cores": 4, "gpu": null}}'
    )
    assert "Its 90% intervals hold 89.7% of the test faces, 15.0 years wide" in results_page.with_headline(
        readme, tmp_path
    )
