"""Every shape an answer takes prints and renders: served or not, with or without a what-if gain,
extrapolated, one workload, unhealthy (the answer path never crashes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from rcutune import storage
from rcutune.tuner.cli import app
from rcutune.tuner.cli._answer import detail_lines, no_answer_line, risk_line
from rcutune.tuner.recommend import Recommendation, trials_digest
from rcutune.tuner.recommend._store import options_key, rcutune_version
from rcutune.tuner.report import render_html, render_markdown
from rcutune.tuner.search import StudyRequest, run_campaign
from tests.support.study import url

EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("reports/*/*/recommendation.json"))


def _example(path: Path) -> Recommendation:
    return Recommendation.from_json(json.loads(path.read_text()))


def _shapes() -> dict[str, Recommendation]:
    base = _example(EXAMPLES[0])
    served = base.workload(base.served[0]) if base.served else base.workloads[0]
    out = {"as shipped": base}
    out["nothing served"] = replace(
        base,
        overall=None,
        overall_what_if=None,
        served=(),
        overall_confirmation={},
        knob_changes=(),
        n_explanation=None,
        workloads=tuple(replace(w, faithful=None) for w in base.workloads),
    )
    out["unhealthy"] = replace(
        out["nothing served"],
        unhealthy={served.workload: ["fallback_cost: CV R² 0.10 < 0.8"]},
        fix_command="rcutune study --hardware x --trials 40",
    )
    if base.overall is not None:
        what_if = replace(base.overall, what_if_reasons=("global pool layout",), gain=None)
        out["what-if without a gain"] = replace(
            base, overall_what_if=what_if, workloads=tuple(replace(w, what_if=what_if) for w in base.workloads)
        )
    out["extrapolated"] = replace(base, extrapolated=True)
    out["one workload"] = replace(base, workloads=(served,), served=tuple(s for s in base.served[:1]))
    return out


def test_the_example_reports_exist():
    assert EXAMPLES, "reports/<hardware>/<campaign>/recommendation.json"


@pytest.mark.parametrize("shape", list(_shapes()))
def test_every_answer_shape_prints_renders_and_round_trips(shape):
    rec = _shapes()[shape]
    lines = detail_lines(rec)
    if rec.overall is not None:
        assert risk_line(rec).startswith("risk: P(every SLO met) = ")
    else:
        assert no_answer_line(rec).startswith("no recommendation: ")
    assert all(isinstance(line, str) and line for line in lines)
    markdown = render_markdown(rec, {}, url="sqlite:///x.db", study_command="rcutune study --hardware x")
    assert markdown.startswith("# rcutune report") and "Traceback" not in markdown
    assert "<h1>" in render_html(markdown, {})
    assert Recommendation.from_json(json.loads(json.dumps(rec.to_json()))).to_json() == json.loads(
        json.dumps(rec.to_json())
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_plain_recommend_prints_every_example_campaigns_stored_answer(path, tmp_path):
    rec = _example(path)
    db = tmp_path / "rcutune.db"
    run_campaign(
        StudyRequest(
            hardware=rec.hardware,
            workloads=("steady",),
            campaign=rec.campaign,
            trials=0,
            storage_url=url(db),
            max_seconds=0.2,
            replications=1,
            race_replications=0,
        )
    )
    options = {"workload": None, "confidence": 0.95, "confirm_seeds": 4}
    database = storage.open_database(url(db))
    try:
        with database.session() as session:
            campaign = storage.find_campaign(session, rec.campaign)
            names = [s.optuna_study_name for s in campaign.studies]
            campaign.answers.append(
                storage.AnswerRecord(
                    options=options,
                    options_sha256=options_key(options),
                    rcutune_version=rcutune_version(),
                    trials_sha256=trials_digest(database.engine, names),
                    document=rec.to_json(),
                )
            )
    finally:
        database.close()
    for extra in ([], ["--quiet"], ["--format", "grub"], ["--json"]):
        result = CliRunner().invoke(app, ["recommend", "--hardware", rec.hardware, "--storage", url(db), *extra])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert "Traceback" not in result.output
        if rec.overall is None:
            assert result.exit_code == (0 if "--json" in extra else 1)
        else:
            assert result.exit_code == 0, result.output
            if not extra:
                assert result.output.splitlines()[0] == rec.overall.kernel_cmdline
    with sa.create_engine(url(db)).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM rcutune_answers")).scalar() == 1
