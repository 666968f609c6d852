"""The principle writer's logic: scripted engines for retries, fallback and errors; a real tiny model at the end.

The scripted engine answers each prompt with the next text of a script (per seed principle, matched by the seed's
text in the prompt), the way a model continues the writer's prefilled 'Principle:'.
"""

import re
from types import SimpleNamespace

import pytest

from sami_ray.config import EngineOptions
from sami_ray.engines import make_engine
from sami_ray.errors import UserError
from sami_ray.evaluate.verifiable import get_principle
from sami_ray.sami.constitutions import Principle
from sami_ray.sami.seeds import derive_seed
from sami_ray.sami.writer import (
    PrincipleWriterCore,
    WriterError,
    _quote,
    judge_rewrite,
    on_topic,
    slug,
    topic_stems,
)

TASK = "Answer practical how-to questions from users."


class ScriptedEngine:
    """generate() answers a prompt holding key K with the next text of script[K]; records every call."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls = []

    def generate(self, prompts, spec, seeds=None):
        self.calls.append((list(prompts), spec, list(seeds or [])))
        out = []
        for p in prompts:
            key = next(k for k in self.script if k in p)
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


def test_seeds_rephrased_names_kept(seeds):
    engine = ScriptedEngine({
        "bulleted list": [" Answer as a list of short bullet points.\nAntithesis: Answer in flowing paragraphs."],
        "under 40 words": [" Keep every answer brief, under 40 words.\nAntithesis: Write long, detailed answers."],
    })
    pset = PrincipleWriterCore(engine, ChatTokenizer()).write(TASK, seeds, 2)
    assert pset.source == "writer" and pset.notes == []
    assert [p.name for p in pset.principles] == ["bullets", "concise"]
    assert pset.principles[1].text == "Keep every answer brief, under 40 words."
    assert pset.principles[1].antithesis == "Write long, detailed answers."
    (prompts, spec, sampling_seeds), = engine.calls  # both seeds in one batch
    assert all(p.startswith("<|user|>") and p.endswith("<|assistant|>Principle:") for p in prompts)
    assert prompts[0].count("<|assistant|>") == 2  # the worked example is an earlier turn
    assert TASK in prompts[0] and prompts[0].endswith(seeds[0].text + "<|end|><|assistant|>Principle:")
    assert spec.n == 1 and spec.max_tokens > 0 and len(set(sampling_seeds)) == 2
    assert sampling_seeds == [derive_seed(0, "writer", "rewrite", 0, i) for i in range(2)]


def test_retry_only_the_failed_seed_with_another_sampling_seed(seeds):
    engine = ScriptedEngine({
        "bulleted list": [" Use bullets.\nAntithesis: Write in paragraphs."],
        "under 40 words": [" I like turtles.\nAntithesis: I hate turtles.",  # off topic
                           "Answer in under 40 words.",  # no antithesis
                           " Be concise.\nOpposite: Be long-winded and verbose."],
    })
    pset = PrincipleWriterCore(engine).write(TASK, seeds, 2, retries=3)
    assert pset.source == "writer"
    assert pset.principles[1] == Principle("concise", "Be concise.", "Be long-winded and verbose.")
    assert [len(c[0]) for c in engine.calls] == [2, 1, 1]
    used = [s for c in engine.calls for s in c[2]]
    assert len(set(used)) == len(used)
    assert not engine.calls[0][0][0].startswith("<|")  # no tokenizer: plain text prompt
    assert engine.calls[0][0][0].endswith(seeds[0].text + "\n\nPrinciple:")


def test_inverted_rewrite_and_copied_example_refused():
    seed = get_principle("lowercase").to_principle()
    script = [" Use standard capitalization, starting each sentence with a capital letter.\n"
              "Antithesis: Write all in lowercase.",
              " Explain everything in simple, everyday words.\nAntithesis: Explain everything in technical jargon.",
              " write in lowercase only, never capitals.\nAntithesis: Capitalize every sentence as usual."]
    with pytest.raises(WriterError) as err:
        PrincipleWriterCore(ScriptedEngine({"lowercase": script})).write(TASK, [seed], 1, retries=1)
    assert "attempt 1: inverted" in str(err.value) and "attempt 2: pair 1" in str(err.value)
    assert "duplicate principle" in str(err.value)
    pset = PrincipleWriterCore(ScriptedEngine({"lowercase": script})).write(TASK, [seed], 1, retries=2)
    assert pset.principles == [Principle("lowercase", "write in lowercase only, never capitals.",
                                         "Capitalize every sentence as usual.")]


def test_judge_rewrite():
    bullets, concise = get_principle("bullets").to_principle(), get_principle("concise").to_principle()
    assert judge_rewrite(bullets, "Answer as a list of short bullet points.", "Answer in flowing paragraphs.") is None
    assert judge_rewrite(concise, "Be concise.", "Be long-winded and verbose.") is None
    assert judge_rewrite(concise, "Keep every answer brief, under 40 words.", "Write long, detailed answers.") is None
    assert "off topic" in judge_rewrite(concise, "Be polite.", "Be rude.")
    assert judge_rewrite(concise, "Answer in at least 80 words.", "Be short.") is not None  # swapped
    why = judge_rewrite(bullets, "Answer as a bulleted list.", "Answer as a bulleted list without special formatting.")
    assert "does not state the opposite" in why and "paragraph" in why


def test_fallback_keeps_seed_and_says_why(seeds):
    engine = ScriptedEngine({
        "bulleted list": [" Use bullet points.\nAntithesis: Use paragraphs."],
        "under 40 words": ["I am an AI.", " Principle.", "Sure! <one sentence>"],
    })
    pset = PrincipleWriterCore(engine).write(TASK, seeds, 2, fallback_to_seeds=True, retries=2)
    assert pset.source == "writer-fallback"
    assert pset.principles[0].text == "Use bullet points."
    assert pset.principles[1] == seeds[1]
    assert len(pset.notes) == 1 and pset.notes[0].startswith("concise:")
    assert "attempt 3" in pset.notes[0] and "Sure! <one sentence>" in pset.notes[0]


def test_no_fallback_raises_with_what_the_model_said(seeds):
    rambling = "blah " * 200
    engine = ScriptedEngine({
        "bulleted list": [" Use bullet points.\nAntithesis: Use paragraphs."],
        "under 40 words": ["I am an AI.", " Be polite.\nAntithesis: Be rude.", rambling, rambling],
    })
    with pytest.raises(UserError) as err:
        PrincipleWriterCore(engine).write(TASK, seeds, 2, retries=3, seed=5)
    msg = str(err.value)
    assert isinstance(err.value, WriterError)
    assert "'concise'" in msg and "after 4 attempt(s)" in msg and "bullets" not in msg.split("\n")[0]
    assert "'I am an AI.'" in msg and "off topic" in msg and "no 'Principle" in msg
    assert "blah blah" in msg and len(msg) < 2000  # long output quoted, truncated
    assert "constitutions.write_with_writer=false" in msg


def test_without_seeds_collects_k_across_attempts():
    engine = ScriptedEngine({"Write 3": [
        ' Be concise. | Antithesis: Be verbose.\n2. Principle: Be concise! | Antithesis: Ramble.\n'
        '3. Principle: Cite sources.',
        'Here:\n```json\n[{"principle": "Be polite to the user.", "antithesis": "Be rude to the user."},'
        ' {"principle": "Be concise", "antithesis": "Be long"},'
        ' {"principle": "Explain each step.", "antithesis": "Skip all steps."}]\n```',
    ]})
    pset = PrincipleWriterCore(engine).write(TASK, [], 3)
    assert pset.source == "writer"
    assert [(p.name, p.text) for p in pset.principles] == [
        ("concise", "Be concise."), ("polite_user", "Be polite to the user."), ("explain", "Explain each step.")]
    assert len(engine.calls) == 2 and engine.calls[0][0][0].endswith("1. Principle:")


def test_without_seeds_too_few_raises():
    engine = ScriptedEngine({"Write 2": [" Be concise. | Antithesis: Be verbose.", "no idea", "1. 2. 3."]})
    with pytest.raises(WriterError, match=r"wrote 1 of 2 usable principle\(s\) after 3 attempt\(s\)") as err:
        PrincipleWriterCore(engine).write(TASK, [], 2, retries=2)
    assert "'no idea'" in str(err.value) and "constitutions.principles" in str(err.value)


def test_more_principles_than_seeds(seeds):
    engine = ScriptedEngine({
        "bulleted list": [" Use bullet points.\nAntithesis: Use paragraphs."],
        "Write 1": [" Use bullet points. | Antithesis: Use prose.\n2. Principle: Be warm. | Antithesis: Be cold."],
    })
    pset = PrincipleWriterCore(engine).write(TASK, seeds[:1], 2)
    assert [p.name for p in pset.principles] == ["bullets", "warm"]  # the seed's text is not repeated


def test_topic_and_slugs():
    concise, bullets = get_principle("concise"), get_principle("bullets")
    assert on_topic("Keep it short.", topic_stems(concise.name, concise.text))
    assert on_topic("Reply with bulleted points.", topic_stems(bullets.name, bullets.text))
    assert not on_topic("Be polite and answer well.", topic_stems(concise.name, concise.text))
    assert on_topic("Ask the user nothing.", topic_stems("no_questions", "Do not ask the user any questions."))
    taken: set[str] = set()
    assert [slug("Be concise!", taken), slug("be concise", taken), slug("!!", taken), slug("Be it", taken)] == [
        "concise", "concise_2", "principle", "be_it"]
    assert _quote("a\n b" * 200).endswith("...'") and len(_quote("x" * 1000)) <= 242


def test_start_writer_names_the_actor_and_asks_for_its_resources(monkeypatch):
    import sami_ray.actors.writer as w
    from sami_ray.config import RoleResources

    seen = {}

    class FakeActorClass:
        def options(self, **kw):
            seen["options"] = kw
            return SimpleNamespace(remote=lambda *args: seen.setdefault("args", args))

    monkeypatch.setattr(w, "PrincipleWriter", FakeActorClass())
    opts = EngineOptions(kv_cache_gb=2.0)
    w.start_writer("/models/x", opts, RoleResources(num_cpus=2, num_gpus=1), runtime_env={"env_vars": {"A": "1"}},
                   backend="hf")
    kw = seen["options"]
    assert re.fullmatch(r"sami-writer-[0-9a-f]{6}", kw.pop("name"))
    assert kw == {"num_cpus": 2, "num_gpus": 1, "runtime_env": {"env_vars": {"A": "1"}}}
    assert seen["args"] == ("/models/x", opts, "hf", "auto", None, None)
    w.start_writer("/m", opts, RoleResources(), name="mine")
    assert seen["options"]["name"] == "mine" and "runtime_env" not in seen["options"]


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
    core = PrincipleWriterCore(engine, tok, max_tokens=24)  # a random model cannot write English anyway

    pset = core.write(TASK, seeds, 2, fallback_to_seeds=True, retries=1)
    assert pset.source == "writer-fallback"
    assert pset.principles == seeds and len(pset.notes) == 2
    assert len(engine.texts) == 4 and any(t.strip() for t in engine.texts)

    engine.texts.clear()
    with pytest.raises(WriterError) as err:
        core.write(TASK, seeds, 2, retries=0, seed=1)
    assert _quote(engine.texts[0]) in str(err.value) and _quote(engine.texts[1]) in str(err.value)
