"""`sami-ray compare` on three tiny runs made of committed evaluation stages (no training): every row is its run's
own eval report, win rates come from a rule judge over the stored answers, and models are evaluated as
`sami-ray eval` evaluates them (here through the stage loop with fake roles)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from sami_ray.config import config_from_dict
from sami_ray.errors import UserError
from sami_ray.evaluate.report import write_report
from sami_ray.evaluate.runner import evaluate_iteration
from sami_ray.inputs import run_queries, seed_principles
from sami_ray.sami.constitutions import PrincipleSet
from sami_ray.sami.sampling import Generation
from sami_ray.stages import StageLoop
from sami_ray.storage.run import RunStore, stage_key
from tests.support.fake_roles import EVASIVE, FakeRoles

pytestmark = pytest.mark.timeout(120)

BULLETS = "Answer as a bulleted list"
CONCISE = "Answer in under 40 words"


class StylePolicy:
    """Answers from the query's words: 'follows' obeys the constitution (bullets, length), 'prose' always writes a
    few plain sentences, 'bullets' always a short list, 'evasive' never answers. Scores favour answers that match their prompt's constitution."""

    def __init__(self, style: str):
        self.style = style

    def answer(self, prompt: str) -> str:
        if self.style == "evasive":
            return EVASIVE
        cons, query = prompt.rsplit("QUERY:", 1)
        words = re.findall(r"[A-Za-z]+", query)[:5]
        lines = [f"{w} matters here." for w in words]
        if self.style == "follows" and CONCISE not in cons:
            lines += [f"Think about {w} again and take your time with it." for w in words]
        if self.style == "bullets" or (self.style == "follows" and BULLETS in cons):
            return "\n".join(f"- {ln}" for ln in lines)
        return " ".join(lines)

    def generate(self, prompts, spec, seeds=None):
        return [[Generation(self.answer(p), num_tokens=8)] * spec.n for p in prompts]

    def score(self, prompts, responses):
        return [[-0.5 if ("- " in r) == (BULLETS in p) else -2.0] * max(1, len(r.split()) // 4)
                for p, r in zip(prompts, responses, strict=True)]


def render(constitution: str, query: str) -> str:
    return f"{constitution}\nQUERY: {query}"


def make_cfg(root: Path, name: str, base: str = "fake-policy", iterations: int = 2, storage: dict | None = None):
    return config_from_dict({
        "run": {"name": name, "iterations": iterations, "seed": 3},
        "models": {"policy": {"path": base}},
        "task": {"queries": {"source": "builtin:howto", "held_out": 6, "limit": 18}},
        "constitutions": {"builtin": ["bullets", "concise"], "write_with_writer": False, "n": 2,
                          "mode": "all_or_none"},
        "evaluation": {"plots": False},
        "storage": storage or {"uri": str(root / "runs")},
    })


def make_run(root: Path, name: str, styles: list[str], final: int | None, base: str = "fake-policy",
             finished: bool = True, storage: dict | None = None) -> str:
    """A run whose iteration k was evaluated with policy style styles[k] (k = 0: the base model), committed as the
    stage loop commits it; its summary names iteration `final`'s model."""
    cfg = make_cfg(root, name, base, iterations=len(styles) - 1, storage=storage)
    store = RunStore.create(cfg, name, cache_dir=root / f"cache-{name}")
    principles = PrincipleSet(seed_principles(cfg.constitutions))
    store.commit_principles(principles.to_dict())
    _, held_out = run_queries(cfg.task.queries)
    base_report = None
    for k, style in enumerate(styles):
        report = evaluate_iteration(StylePolicy(style), held_out, principles.principles, cfg.evaluation,
                                    cfg.task.kind, render, k, base_report, cfg.run.seed, cfg.sampler,
                                    cfg.constitutions)
        report["model"] = stage_key(k, "model") if k else "base"
        base_report = base_report or report
        with tempfile.TemporaryDirectory() as tmp:
            write_report(report, tmp)
            store.commit(stage_key(k, "eval"), Path(tmp))
    if finished:
        store.put_summary({"final_model": stage_key(final, "model") if final else None, "timings": {},
                           "stopped_early": None})
    return store.uri


@pytest.fixture
def three_runs(tmp_path):
    return [make_run(tmp_path, "sami", ["prose", "prose", "follows"], final=2),
            make_run(tmp_path, "dpo", ["prose", "bullets", "evasive"], final=1),  # iteration 2 rolled back
            make_run(tmp_path, "sft", ["prose", "prose", "prose"], final=2)]


class LongerWins:
    """A judge that prefers the longer answer (ties on equal length) and garbles every verdict on one query."""

    def __init__(self, garbled_query: str):
        self.garbled, self.prompts = garbled_query, 0

    def complete(self, prompts):
        self.prompts += len(prompts)
        out = []
        for p in prompts:
            if self.garbled in p:
                out.append("Both answers are fine, I suppose.")
                continue
            a, b = re.search(r"\[Answer A\]\n(.*?)\n\[End of Answer A\].*?\[Answer B\]\n(.*?)\n\[End of Answer B\]",
                             p, re.S).groups()
            la, lb = len(a.split()), len(b.split())
            out.append("Reason. [[A]]" if la > lb else "Reason. [[B]]" if lb > la else "Same. [[C]]")
        return out


def _compare(tmp_path, targets, **kw):
    from sami_ray.cli.compare import compare

    return compare(targets, out=tmp_path / "cmp", progress=lambda _m: None, **kw)


def test_rows_are_each_runs_own_eval_report(tmp_path, three_runs, capsys):
    from sami_ray.evaluate.compare import markdown_table

    doc, paths = _compare(tmp_path, three_runs)
    assert [r["label"] for r in doc["rows"]] == ["base", "sami", "dpo", "sft"]
    assert [r["iteration"] for r in doc["rows"]] == [0, 2, 1, 2]
    for row in doc["rows"]:
        report = RunStore.open(row["source"]).eval_report(row["iteration"])
        f, overall = row["figures"], report["degeneration"]["overall"]
        assert f["mi_bound"] == report["mi_bound"]["mi_bound"]
        assert (f["on_topic"], f["mean_words"], f["queries"]) == (overall["on_topic"], overall["mean_words"],
                                                                  report["queries"])
        assert f["verifiable"] == {p: {"positive_follows": v["positive_follows"],
                                       "antithesis_follows_principle": v["antithesis_follows_principle"]}
                                   for p, v in report["verifiable"].items()}
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(doc))
    table = paths["markdown"].read_text()
    assert table.strip() == markdown_table(doc)
    sami = next(ln for ln in table.splitlines() if ln.startswith("| sami |"))
    sami_report = RunStore.open(three_runs[0]).eval_report(2)
    assert f"{sami_report['mi_bound']['mi_bound']:.3f}" in sami
    assert f"{sami_report['degeneration']['overall']['mean_words']:.1f}" in sami
    assert "no judge is configured" in table and "win vs" not in table
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(table)  # the example table of the report (pytest -s shows it)


def test_win_rates_each_against_each_with_unparsed_verdicts_counted(tmp_path, three_runs):
    _, held_out = run_queries(make_cfg(tmp_path, "x").task.queries)
    judge = LongerWins(held_out[0].text)
    doc, paths = _compare(tmp_path, three_runs, judge=judge)
    rows = {r["label"]: r for r in doc["rows"]}
    answers_per_row = 6 * 2  # held-out queries x constitutions (one seed)
    assert len(doc["judgments"]) == 6 and judge.prompts == 6 * 2 * answers_per_row
    for j in doc["judgments"]:
        assert j["pairs"] == answers_per_row
        assert j["unparseable"] == 2 * 2, "the garbled query's two constitutions, both orders"
        assert j["wins"] + j["losses"] + j["ties"] + j["unparseable"] == j["verdicts"]
    # prose vs prose: equal answers tie; 'follows' writes longer answers under 'long' constitutions
    assert rows["base"]["win_rates"]["sft"]["win_rate"] == 0.5
    assert rows["sami"]["win_rates"]["base"]["win_rate"] > 0.5
    # the reverse direction is read off the same verdicts
    for a in rows:
        for b, t in rows[a]["win_rates"].items():
            back = rows[b]["win_rates"][a]
            assert (t["wins"], t["losses"], t["ties"]) == (back["losses"], back["wins"], back["ties"])
            assert t["win_rate"] + back["win_rate"] == pytest.approx(1.0)
    table = paths["markdown"].read_text()
    assert "| row | iter | queries | MI bound | on-topic | mean words | bullets +/- | concise +/- | win vs base |" \
           in table and "win (all)" in table
    assert "(4 unparsed)" in table and "unparsed 24" in table
    print(table)


def test_baseline_judges_every_row_against_one(tmp_path, three_runs):
    doc, paths = _compare(tmp_path, three_runs, judge=LongerWins("never in a prompt"), baseline=three_runs[2])
    assert doc["baseline"] == "sft"
    assert sorted((j["a"], j["b"]) for j in doc["judgments"]) == [("base", "sft"), ("dpo", "sft"), ("sami", "sft")]
    table = paths["markdown"].read_text()
    assert "win vs sft" in table and "win vs base" not in table and "win (all)" not in table
    with pytest.raises(UserError, match="--baseline nobody: not one of the rows"):
        _compare(tmp_path, three_runs, judge=LongerWins("x"), baseline="nobody")


def test_iteration_option_and_unfinished_runs(tmp_path):
    done = make_run(tmp_path, "done", ["prose", "follows"], final=1)
    running = make_run(tmp_path, "running", ["prose", "prose", "follows"], final=None, finished=False)
    doc, _ = _compare(tmp_path, [done, running])
    assert [(r["label"], r["iteration"]) for r in doc["rows"]] == [("base", 0), ("done", 1), ("running", 2)]
    assert any("running: the run has not finished" in n for n in doc["notes"])
    doc, _ = _compare(tmp_path, [done, running], iteration=0)
    assert [r["iteration"] for r in doc["rows"]] == [0, 0, 0]
    with pytest.raises(UserError, match=r"done.*iteration 2 has no committed evaluation \(iter-0002/eval\)"):
        _compare(tmp_path, [done, running], iteration=2)


def test_no_base_row_when_runs_start_from_different_models(tmp_path):
    a = make_run(tmp_path, "a", ["prose", "follows"], final=1)
    b = make_run(tmp_path, "b", ["prose", "prose"], final=1, base="other-model")
    doc, _ = _compare(tmp_path, [a, b])
    assert [r["label"] for r in doc["rows"]] == ["a", "b"]
    assert any("different models" in n for n in doc["notes"])


def test_a_model_is_evaluated_on_the_first_runs_queries_and_principles(tmp_path, three_runs):
    roles = FakeRoles(tmp_path)

    class FakeRun:  # Run.start's shape, with the stage loop on fake roles
        def __init__(self, cfg):
            self.cfg = cfg
            self.loop = StageLoop(cfg, RunStore.create(cfg, "compare", cache_dir=tmp_path / "c-model"), roles,
                                  say=lambda _m: None)

        def shutdown(self):
            roles.shutdown()

    started = []

    def start_run(cfg):
        started.append(cfg)
        return FakeRun(cfg)

    doc, _ = _compare(tmp_path, [three_runs[0], "builtin:some-model"], judge=LongerWins("never"),
                      start_run=start_run)
    assert started[0].models.policy.path == "builtin:some-model"
    assert started[0].task.queries == make_cfg(tmp_path, "x").task.queries
    model_row = doc["rows"][-1]
    assert model_row["label"] == "builtin:some-model" and model_row["iteration"] is None
    assert model_row["figures"]["queries"] == 6
    judged = {(j["a"], j["b"]): j for j in doc["judgments"]}
    assert judged[("sami", "builtin:some-model")]["pairs"] == 12, "same questions under the same constitutions"
    assert roles.shut == 1


def test_a_run_in_s3_is_read_through_the_store(tmp_path, s3_server, monkeypatch):
    from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY

    bucket = s3_server.new_bucket()
    uri = make_run(tmp_path, "remote", ["prose", "follows"], final=1,
                   storage={"uri": f"s3://{bucket}/runs", **s3_server.store_kwargs()})
    local = make_run(tmp_path, "local", ["prose", "prose"], final=1)
    assert uri == f"s3://{bucket}/runs/remote"
    # the stored config has its credentials redacted: reading the run takes the standard chain
    for var, value in (("AWS_ENDPOINT_URL_S3", s3_server.url), ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                       ("AWS_SECRET_ACCESS_KEY", SECRET_KEY), ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(var, value)
    doc, paths = _compare(tmp_path, [uri, local], judge=LongerWins("never"))
    assert [(r["label"], r["source"], r["iteration"]) for r in doc["rows"]] == [
        ("base", uri, 0), ("remote", uri, 1), ("local", str(tmp_path / "runs" / "local"), 1)]
    remote = RunStore.open(uri).eval_report(1)
    assert doc["rows"][1]["figures"]["mi_bound"] == remote["mi_bound"]["mi_bound"]
    assert doc["judgments"] and all(j["pairs"] == 12 for j in doc["judgments"])
    assert SECRET_KEY not in paths["json"].read_text()


def test_overrides_keep_store_credentials(tmp_path):
    from sami_ray.cli.compare import with_overrides
    from sami_ray.config import secret_value

    cfg = make_cfg(tmp_path, "x", storage={"uri": "s3://bkt/runs", "access_key_id": "AK", "secret_access_key": "SK"})
    out = with_overrides(cfg, ["evaluation.judge.kind=none", "models.policy.path=builtin:other"])
    assert (out.storage.access_key_id, secret_value(out.storage.secret_access_key)) == ("AK", "SK")
    assert out.models.policy.path == "builtin:other"


def test_targets_that_are_neither_runs_nor_models_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: neither a run folder"):
        _compare(tmp_path, [str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no-such: no such run or model folder"):
        _compare(tmp_path, [str(tmp_path / "no-such")])


def test_the_cli_prints_the_table(tmp_path, three_runs):
    from typer.testing import CliRunner

    from sami_ray.cli.app import app

    result = CliRunner().invoke(app, ["compare", *three_runs, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "| sami | 2 |" in result.output and "comparison.png" in result.output
    assert (tmp_path / "cli" / "comparison.md").exists()
