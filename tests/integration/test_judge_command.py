"""`sami-ray judge A B` on two responses files (ours and a SAMI reference file) with the judge behind the real
OpenAI-style test server of test_judge_http.py: the table, the JSON, the raw judgments, unmatched and unparsed."""

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sami_ray.cli.app import app
from sami_ray.evaluate.responses import Answer, read_responses, write_responses
from tests.integration.test_judge_http import JudgeHandler

REFERENCE = Path(__file__).parents[1] / "fixtures" / "datasets" / "reference" / "sami_extension_mt_bench_responses.json"


@pytest.fixture(scope="module")
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def job(tmp_path: Path, url: str, model: str) -> str:
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump({"task": {"kind": "instruction"},
                                    "evaluation": {"judge": {"kind": "openai", "url": url, "model": model,
                                                             "timeout_s": 5}}}))
    return str(path)


@pytest.fixture
def candidate(tmp_path):
    """Answers to the reference file's questions: a bulleted list (the test judge prefers more '- ' lines) for the
    first, a plain sentence for the second, and one to a question the reference file does not hold."""
    ref = read_responses(REFERENCE)
    return write_responses([Answer(ref[0].query, ref[0].constitution, "- day one\n- day two\n- day three"),
                            Answer(ref[1].query, ref[1].constitution, "They cost 8 dollars."),
                            Answer("Not in the reference", ref[0].constitution, "- a\n- b")],
                           tmp_path / "candidate.jsonl")


def test_judge_two_responses_files(tmp_path, judge_url, candidate):
    out = tmp_path / "result.json"
    res = CliRunner().invoke(app, ["judge", str(candidate), str(REFERENCE), "--job", job(tmp_path, judge_url, "fair"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    r = doc["result"]
    # pair 1: the list wins in both orders; pair 2: no lists on either side, a tie in both orders
    assert (r["wins"], r["losses"], r["ties"], r["unparseable"]) == (2, 0, 2, 0)
    assert r["win_rate"] == pytest.approx(0.75)
    assert r["matching"] == {"matched": 2, "candidate_unmatched": 1, "baseline_unmatched": 1}
    assert r["lengths"]["candidate_mean_words"] == pytest.approx((6 + 4) / 2)  # words, not list markers
    assert r["length_controlled_win_rate"]["verdicts"] == 4 and "raw_judgments" not in r
    raw = [json.loads(x) for x in (tmp_path / "result.judgments.jsonl").read_text().splitlines()]
    assert len(raw) == 4 and {x["order"] for x in raw} == {"candidate_first", "baseline_first"}
    assert all(x["reply"].startswith("Reason:") for x in raw)
    for text in ("A first", "B first", "both orders", "length-controlled win rate of A", "mean words: A 5.0",
                 "unmatched answers: A 1, B 1"):
        assert text in res.output


def test_unparsed_verdicts_are_counted_never_wins(tmp_path, judge_url, candidate):
    out = tmp_path / "garbage.json"
    res = CliRunner().invoke(app, ["judge", str(candidate), str(REFERENCE), "--job",
                                   job(tmp_path, judge_url, "garbage"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())["result"]
    assert r["unparseable"] == 4 and r["wins"] == 0 and r["win_rate"] is None
    assert r["length_controlled_win_rate"]["win_rate"] is None
