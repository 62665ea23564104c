"""The reproductions' shared results format (experiments/reproduce/common.py) and stage helpers."""

import json
import math

import pytest

from alignment.engine.config import override
from experiments.pipelines import stages
from experiments.reproduce import common


def test_stats_are_mean_and_sample_std_with_per_seed_values():
    s = common.stats([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert s["values"] == [1.0, 2.0, 4.0]
    assert common.stats([0.5])["std"] == 0.0


def test_stats_and_rows_refuse_bad_values():
    with pytest.raises(ValueError, match="value 1 is nan"):
        common.stats([0.1, float("nan")])
    with pytest.raises(ValueError, match="'gold' has 1 values for 2 seeds"):
        common.row("DPO", [0, 1], gold=[0.3])


def test_parse_args_defaults(tmp_path):
    a = common.parse_args("demo", ["--out", str(tmp_path / "o"), "--quick"])
    assert (a.seeds, a.quick, a.workdir) == (common.QUICK_SEEDS, True, str(tmp_path / "o" / "runs"))
    assert common.parse_args("demo", ["--out", str(tmp_path / "o")]).seeds == common.FULL_SEEDS
    with pytest.raises(SystemExit):
        common.parse_args("demo", ["--quick"])  # --out is required


def test_write_results_contract(tmp_path):
    common.parse_args("demo", ["--out", str(tmp_path), "--seeds", "2"])
    rows = [
        common.row("SFT", [0, 1], gold=[0.1, 0.2]),
        common.row("DPO", [0, 1], gold=[0.4, 0.6], kl=[2.0, 3.0]),
    ]
    plot = common.bar_plot(rows, "gold", str(tmp_path / "bars.png"), title="t")
    out = common.write_results(
        str(tmp_path),
        name="demo",
        paper="P",
        claim="DPO beats SFT",
        supported=True,
        verdict="0.5 > 0.15",
        rows=rows,
        settings={"steps": 3},
        quick=False,
        wall_clock_s=3.21,
        plots=[plot],
    )
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == out
    for key in (
        "claim",
        "supported",
        "rows",
        "paper",
        "verdict",
        "settings",
        "seeds",
        "plots",
        "command",
    ):
        assert key in on_disk
    assert on_disk["rows"][1]["gold"]["values"] == [0.4, 0.6] and on_disk["seeds"] == [0, 1]
    assert (
        on_disk["command"]
        == "python -m experiments.reproduce.demo --out " + str(tmp_path) + " --seeds 2"
    )
    assert "| DPO | 0.500 ± 0.141 | 2.500 ± 0.707 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "bars.png").stat().st_size > 0


def test_with_data_and_run_stage_checks(tmp_path):
    c = stages.sft_stage_config(steps=3)
    filled = stages.with_data(c, data_dir=str(tmp_path), seed=7, tokenizer="tiny", init_from="")
    assert (filled.seed, filled.data.seed, filled.data.source) == (7, 7, "jsonl")
    assert filled.data.files.train == str(tmp_path / "train.jsonl")
    no_export = override(c, {"export_hf": False})
    with pytest.raises(ValueError, match="export_hf must be True"):
        stages.run_stage(no_export, str(tmp_path / "w"))
