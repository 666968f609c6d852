"""The principle writer's logic: scripted engines for selection, retries, fallback and errors; the checks that
refuse a bad rewording; a real tiny model at the end.

The scripted engine answers each prompt with the next text of a script (per side of a seed principle, matched by
the text in the prompt's last turn), the way a model continues the writer's prefilled 'Rewritten:'.
"""

import re
from types import SimpleNamespace

import pytest

from sami_ray.config import EngineOptions, load_config
from sami_ray.engines import make_engine
from sami_ray.errors import UserError
from sami_ray.evaluate.verifiable import get_principle
from sami_ray.sami.constitutions import Principle
from sami_ray.sami.seeds import derive_seed
from sami_ray.sami.writer import (
    REWORD_EXAMPLES,
    PrincipleWriterCore,
    WriterError,
    _quote,
    bounds,
    judge_pair,
    judge_side,
    slug,
    stances,
)

TASK = "Answer practical how-to questions from users."
# The script key of each side of the two demo principles: a phrase only that side's prompt holds.
BUL, PROSE, SHORT, LONG = "bulleted list: each", "plain prose", "under 40 words", "at least 80 words"


class ScriptedEngine:
    """generate() answers a prompt whose last turn holds key K with the next text of script[K]; records calls."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls = []

    def generate(self, prompts, spec, seeds=None):
        self.calls.append((list(prompts), spec, list(seeds or [])))
        out = []
        for p in prompts:
            last = p.rsplit("Instruction:", 1)[-1] if "Rewritten:" in p[-12:] else p
            key = next(k for k in self.script if k in last)
            out.append([SimpleNamespace(text=self.script[key].pop(0), truncated=False)])
        return out


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize and add_generation_prompt
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"


@pytest.fixture
def seeds():
    return [get_principle("bullets").to_principle(), get_principle("concise").to_principle()]


def test_each_side_reworded_from_candidates_in_one_batch_first_that_passes_kept(seeds):
    engine = ScriptedEngine({
        BUL: [" Answer as a bulleted list: each line starts with '- '.", " Use a bulleted list for every answer."],
        PROSE: [" Write in plain prose paragraphs.", " Write paragraphs, never lists."],
        SHORT: [" Give 3 examples or fewer.", " Keep every answer shorter than 40 words."],
        LONG: [" Answer in at least 80 words.", " Write 80 words or more."],
    })
    core = PrincipleWriterCore(engine, ChatTokenizer(), candidates=2, temperature=0.9)
    pset = core.write(TASK, seeds, 2, seed=3)
    assert pset.source == "writer" and pset.notes == []
    assert [(p.name, p.text, p.antithesis) for p in pset.principles] == [
        ("bullets", "Use a bulleted list for every answer.", "Write in plain prose paragraphs."),
        ("concise", "Keep every answer shorter than 40 words.", "Write 80 words or more.")]
    assert pset.principles[0].paraphrases == () and pset.principles[1].antithesis_paraphrases == ()
    (prompts, spec, sampling_seeds), = engine.calls  # every side's candidates in one batch
    assert len(prompts) == 8 and prompts[0] == prompts[1] and len(set(prompts)) == 4
    assert all(p.startswith("<|user|>") and p.endswith("<|assistant|>Rewritten:") for p in prompts)
    assert prompts[0].count("<|assistant|>") == len(REWORD_EXAMPLES) + 1  # the worked examples are earlier turns
    assert TASK in prompts[0] and prompts[0].endswith(f"Instruction: {seeds[0].text}<|end|><|assistant|>Rewritten:")
    assert prompts[2].endswith(f"Instruction: {seeds[0].antithesis}<|end|><|assistant|>Rewritten:")
    assert spec.n == 1 and spec.stop == ["\n"] and spec.temperature == 0.9 and 0 < spec.max_tokens <= 64
    assert sampling_seeds == [derive_seed(3, "writer", "reword", 0, i, positive, c)
                              for i in range(2) for positive in (True, False) for c in range(2)]


def test_another_round_only_for_the_sides_still_missing(seeds):
    engine = ScriptedEngine({
        BUL: [" Use bullet points."],
        PROSE: [" Write paragraphs."],
        SHORT: [" I like turtles.", " Answer in 40 words.", " Be brief: under 40 words."],
        LONG: [" Use at least 80 words."],
    })
    pset = PrincipleWriterCore(engine, candidates=1, retries=2).write(TASK, seeds, 2)
    assert pset.source == "writer" and pset.notes == []
    assert pset.principles[1] == Principle("concise", "Be brief: under 40 words.", "Use at least 80 words.")
    assert [len(c[0]) for c in engine.calls] == [4, 1, 1]
    used = [s for c in engine.calls for s in c[2]]
    assert len(set(used)) == len(used)
    assert not engine.calls[0][0][0].startswith("<|")  # no tokenizer: plain text prompt
    assert engine.calls[0][0][0].endswith(f"Instruction: {seeds[0].text}\n\nRewritten:")


def test_a_side_with_no_accepted_rewording_keeps_its_configured_phrasing(seeds):
    engine = ScriptedEngine({BUL: [" Use bullet points."], PROSE: [" Use bullet points too."],
                             SHORT: [" Be brief."], LONG: [" Be long."]})
    pset = PrincipleWriterCore(engine, candidates=1, retries=0).write(TASK, seeds, 2, fallback_to_seeds=True)
    assert pset.principles[0] == Principle("bullets", "Use bullet points.", seeds[0].antithesis)
    assert pset.principles[1] == seeds[1] and pset.source == "writer-fallback"
    assert pset.notes[0].startswith("bullets: kept the configured antithesis") and "inverted" in pset.notes[0]
    assert pset.notes[1].startswith("concise: kept the configured phrasing") and "40 (max)" in pset.notes[1]


def test_paraphrases_are_the_next_accepted_candidates(seeds):
    engine = ScriptedEngine({
        BUL: [" Use bullet points.", " Use bullet points!", " Answer with a list of bullets.", " Be kind."]
        + [" Be kind."] * 4,
        PROSE: [" Write paragraphs.", " Write plain prose.", " Use paragraphs, not lists.", " x"],
    })
    pset = PrincipleWriterCore(engine, candidates=4, retries=1, paraphrases=2).write(TASK, seeds[:1], 1)
    p = pset.principles[0]
    assert (p.text, p.paraphrases) == ("Use bullet points.", ("Answer with a list of bullets.",))
    assert (p.antithesis, p.antithesis_paraphrases) == ("Write paragraphs.", ("Write plain prose.",
                                                                              "Use paragraphs, not lists."))
    assert p.phrasings(True) == ("Use bullet points.", "Answer with a list of bullets.")
    assert pset.notes == ["bullets: 1 of 2 paraphrase(s) of the principle"]
    assert len(engine.calls) == 2 and len(engine.calls[1][0]) == 4  # one more round, for the principle only


def test_no_fallback_raises_with_what_the_model_said(seeds):
    rambling = "blah " * 200
    engine = ScriptedEngine({
        BUL: [" Use bullet points."], PROSE: [" Use paragraphs."],
        SHORT: [" I am an AI.", rambling], LONG: [" Be polite.", " Answer in at least 80 words."],
    })
    with pytest.raises(UserError) as err:
        PrincipleWriterCore(engine, candidates=1, retries=1).write(TASK, seeds, 2, seed=5)
    msg = str(err.value)
    assert isinstance(err.value, WriterError)
    assert "'concise'" in msg and "after 2 round(s) of 1 candidate(s)" in msg and "bullets" not in msg.split("\n")[0]
    assert "'I am an AI.'" in msg and "'Be polite.'" in msg and "copies the configured antithesis" in msg
    assert "blah blah" in msg and len(msg) < 2000  # long output quoted, truncated
    assert "constitutions.write_with_writer=false" in msg


def test_cut_off_candidates_are_refused(seeds):
    class Truncating(ScriptedEngine):
        def generate(self, prompts, spec, seeds=None):
            out = super().generate(prompts, spec, seeds)
            return [[SimpleNamespace(text=g[0].text, truncated=True)] for g in out]

    engine = Truncating({BUL: [" Use bullet points for"], PROSE: [" Write paragraphs"]})
    pset = PrincipleWriterCore(engine, candidates=1, retries=0).write(TASK, seeds[:1], 1, fallback_to_seeds=True)
    assert pset.principles == seeds[:1] and "cut off at max_tokens" in pset.notes[0]


# ---------------------------------------------------------------- the checks

def test_numbers_keep_their_bounds_and_negations_flip_them():
    assert bounds("Answer in under 40 words.") == {("40", "max")} == bounds("Keep it to 40 words or fewer.")
    assert bounds("Do not write more than 40 words.") == {("40", "max")} == bounds("No more than 40 words.")
    assert bounds("Use at least 80 words.") == {("80", "min")} == bounds("Write no fewer than 80 words.")
    assert bounds("Not in less than 40 words.") == {("40", "min")}
    assert bounds("Answer in 40 words.") == {("40", None)} and bounds("Be brief.") == set()
    assert stances("Write prose, with no lists or bullet points.") == [
        ("pros", True), ("list", False), ("bullet", False), ("point", False)]
    assert stances("Don't use lists; write paragraphs.") == [("list", False), ("paragraph", True)]


@pytest.mark.parametrize(("name", "positive", "text", "why"), [
    # kept
    ("bullets", True, "Use bullet points for every answer.", None),
    ("bullets", True, "Answer as a list: each line starts with '-'.", None),
    ("bullets", False, "Write paragraphs, never lists.", None),
    ("bullets", False, "Do not use lists or bullet points.", None),
    ("concise", True, "Keep every answer shorter than 40 words.", None),
    ("concise", True, "Do not write more than 40 words.", None),
    ("concise", False, "Write 80 words or more.", None),
    ("lowercase", True, "write in lowercase only, never capitals.", None),
    ("lowercase", False, "Capitalize every sentence as usual.", None),
    # refused
    ("bullets", True, "  ", "empty"),
    ("bullets", True, "Answer as a bulleted list. Each line starts with '- '", "copies the configured principle"),
    ("bullets", True, "Answer in plain prose paragraphs, with no lists or bullet points.", "inverted (it is"),
    ("bullets", True, "Speak to the user kindly and with respect.", "copies a worked example"),
    ("bullets", True, "Answer each line with no lists or bullet points.", "inverted (reads like the antithesis"),
    ("bullets", True, "Answer as a bulleted list: each line starts with 'A'.", "quotes ['A']"),
    ("bullets", True, "Answer as a bulleted list: each line should start with a ' '.", "quotes [' ']"),
    ("bullets", True, "Be polite to the user.", "off topic"),
    ("bullets", True, "Answer as a bulleted list with an underscore at the end.", "does not say (end, underscor)"),
    ("bullets", False, "Give a concise answer in plain prose paragraphs.", "adds another topic (concis)"),
    ("bullets", False, "Answer in plain prose paragraphs or bullet points.", "asks for both sides"),
    ("concise", True, "Be concise.", "drops or changes the number bound(s) 40 (max)"),
    ("concise", True, "Answer in 40 words.", "40 (max)"),
    ("concise", True, "Do not answer in less than 40 words.", "40 (max)"),
    ("concise", True, "Answer in under 50 words.", "40 (max)"),
    ("concise", False, "No more than 80 words.", "80 (min)"),
    ("lowercase", True, "Use standard capitalization, starting each sentence with a capital letter.", "inverted"),
    ("closing_phrase", True, "End your answer with a friendly closing phrase.", "drops the exact phrase"),
])
def test_judge_side(name, positive, text, why):
    got = judge_side(get_principle(name).to_principle(), positive, text, [t for p in REWORD_EXAMPLES for t in p])
    assert got is None if why is None else (got is not None and why in got), got


def test_judge_pair_for_freely_written_principles():
    assert judge_pair("Mention the total cost.", "Never mention the cost.") is None  # a word negated
    assert judge_pair("Use formal language.", "Use casual language.") is None  # a word replaced
    assert judge_pair("Be concise.", "Be verbose.") is None  # opposite synonym groups
    assert "a single word" in judge_pair("Never compare real steps to imagined ones.", "Realism.")
    assert "does not state the opposite" in judge_pair("Give clear steps.", "Give clear steps with examples.")
    assert "about something else" in judge_pair("Be polite.", "Be concise.")
    # Antonyms that share no word are refused too (there is no lexicon): the worked example shows antitheses that
    # keep the principle's words, and the other candidates make up for it.
    assert "about something else" in judge_pair("Be polite.", "Be rude.")


# ---------------------------------------------------------------- no seeds: k principles from the task alone

def test_without_seeds_k_principles_from_candidate_lists_in_one_batch():
    engine = ScriptedEngine({"Write 3": [
        ' Be concise. | Antithesis: Be verbose.\n2. Principle: Be concise! | Antithesis: Ramble on.\n'
        '3. Principle: Cite sources.',
        'Here:\n```json\n[{"principle": "Greet the user warmly.", "antithesis": "Never greet the user."},'
        ' {"principle": "Give clear steps.", "antithesis": "Give clear steps with pictures."},'
        ' {"principle": "Explain each step.", "antithesis": "Never explain a step."}]\n```',
    ]})
    pset = PrincipleWriterCore(engine, candidates=2).write(TASK, [], 3, seed=4)
    assert pset.source == "writer"
    assert [(p.name, p.text, p.antithesis) for p in pset.principles] == [
        ("concise", "Be concise.", "Be verbose."), ("greet_user_warmly", "Greet the user warmly.", "Never greet the user."),
        ("explain", "Explain each step.", "Never explain a step.")]
    (prompts, spec, sampling_seeds), = engine.calls
    assert len(prompts) == 2 and prompts[0].endswith("1. Principle:") and spec.stop == ["\n\n"]
    assert sampling_seeds == [derive_seed(4, "writer", "free", 0, c) for c in range(2)]


def test_without_seeds_with_paraphrases():
    engine = ScriptedEngine({
        "Write 1": [" Mention the total cost. | Antithesis: Never mention the cost."],
        "total cost": [" Say what it all costs.", " State the full cost."],
        "Never mention": [" Keep the cost to yourself.", " Do not say what anything costs."],
    })
    pset = PrincipleWriterCore(engine, candidates=1, retries=1, paraphrases=1).write(TASK, [], 1)
    p = pset.principles[0]
    assert (p.name, p.text, p.antithesis) == ("mention_total_cost", "Mention the total cost.",
                                              "Never mention the cost.")
    assert p.paraphrases == ("Say what it all costs.",) and p.antithesis_paraphrases == (
        "Do not say what anything costs.",)  # 'Keep the cost to yourself.' reads like the principle
    assert pset.notes == []


def test_without_seeds_too_few_raises():
    engine = ScriptedEngine({"Write 2": [" Be concise. | Antithesis: Be verbose.", "no idea", "1. 2. 3."]})
    with pytest.raises(WriterError, match=r"wrote 1 of 2 usable principle\(s\) after 3 round\(s\)") as err:
        PrincipleWriterCore(engine, candidates=1).write(TASK, [], 2, retries=2)
    assert "'no idea'" in str(err.value) and "constitutions.principles" in str(err.value)


def test_more_principles_than_seeds(seeds):
    engine = ScriptedEngine({
        BUL: [" Use bullet points."], PROSE: [" Use paragraphs."],
        "Write 1": [" Use bullet points. | Antithesis: Use prose.\n2. Principle: Greet the user. | "
                    "Antithesis: Never greet the user."],
    })
    pset = PrincipleWriterCore(engine, candidates=1).write(TASK, seeds[:1], 2)
    assert [p.name for p in pset.principles] == ["bullets", "greet_user"]  # the seed's text is not repeated


def test_slugs_and_quotes():
    taken: set[str] = set()
    assert [slug("Be concise!", taken), slug("be concise", taken), slug("!!", taken), slug("Be it", taken)] == [
        "concise", "concise_2", "principle", "be_it"]
    assert _quote("a\n b" * 200).endswith("...'") and len(_quote("x" * 1000)) <= 242


# ---------------------------------------------------------------- the writer's settings reach it

def test_writer_settings_reach_the_core_on_the_policys_pool(monkeypatch):
    from sami_ray.roles import Roles

    cfg = load_config(None, ["models.policy.path=pol", "models.writer.path=pol", "writer.candidates=3",
                             "writer.retries=0", "writer.paraphrases=1", "writer.temperature=0.5"])
    roles = Roles(cfg)
    engine = ScriptedEngine({"Write 2": [" Be concise. | Antithesis: Be verbose.\n2. Principle: Greet the user. | "
                                         "Antithesis: Never greet the user."] * 3,
                             "concise": [" Be brief."] * 3, "verbose": [" Ramble on."] * 3,
                             "Greet": [" Say hello to the user."] * 3, "Never greet": [" Do not greet anyone."] * 3})
    monkeypatch.setattr(roles, "policy", lambda folder=None: engine)
    monkeypatch.setattr(roles, "chat_tokenizer", lambda role: None)
    pset = roles.write_principles(TASK, [], seed=0)
    assert [p.name for p in pset.principles] == ["concise", "greet_user"]
    assert len(engine.calls) == 2 and len(engine.calls[0][0]) == 3 and engine.calls[0][1].temperature == 0.5
    assert len(engine.calls[1][0]) == 4 * 3  # paraphrases: both sides of both principles, 3 candidates each


def test_start_writer_names_the_actor_and_passes_its_settings(monkeypatch):
    import sami_ray.actors.writer as w
    from sami_ray.config import RoleResources

    seen = {}

    class FakeActorClass:
        def options(self, **kw):
            seen["options"] = kw
            return SimpleNamespace(remote=lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))

    monkeypatch.setattr(w, "PrincipleWriter", FakeActorClass())
    opts = EngineOptions(kv_cache_gb=2.0)
    w.start_writer("/models/x", opts, RoleResources(num_cpus=2, num_gpus=1), runtime_env={"env_vars": {"A": "1"}},
                   backend="hf", options={"candidates": 4})
    kw = seen["options"]
    assert re.fullmatch(r"sami-writer-[0-9a-f]{6}", kw.pop("name"))
    assert kw == {"num_cpus": 2, "num_gpus": 1, "runtime_env": {"env_vars": {"A": "1"}}}
    assert seen["args"] == ("/models/x", opts, "hf", "auto", None, None)
    assert seen["kwargs"] == {"options": {"candidates": 4}}
    w.start_writer("/m", opts, RoleResources(), name="mine")
    assert seen["options"]["name"] == "mine" and "runtime_env" not in seen["options"] and seen["kwargs"] == {}


# ---------------------------------------------------------------- a real (tiny, random) transformers model

class Recording:
    def __init__(self, engine):
        self.engine, self.texts = engine, []

    def generate(self, prompts, spec, seeds=None):
        out = self.engine.generate(prompts, spec, seeds=seeds)
        self.texts += [g[0].text for g in out]
        return out


def test_real_tiny_model_falls_back_or_quotes_output(tmp_path, seeds):
    from transformers import AutoTokenizer

    from tests.support.tiny_models import tiny_model

    path = tiny_model(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(path)
    engine = Recording(make_engine(str(path), "hf", EngineOptions()))
    core = PrincipleWriterCore(engine, tok, max_tokens=16, candidates=2)  # a random model cannot write English

    pset = core.write(TASK, seeds, 2, fallback_to_seeds=True, retries=1)
    assert pset.source == "writer-fallback"
    assert pset.principles == seeds and len(pset.notes) == 2
    assert len(engine.texts) == 2 * 2 * 2 * 2 and any(t.strip() for t in engine.texts)

    engine.texts.clear()
    with pytest.raises(WriterError) as err:
        core.write(TASK, seeds, 2, retries=0, seed=1)
    assert len(engine.texts) == 8 and "no usable rewording of principle 'bullets'" in str(err.value)
