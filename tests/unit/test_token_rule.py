"""One tokenisation rule for trainer and scorers: the prompt as a sampler sees it (BOS first when the tokenizer adds
one), the response without special tokens. Checked with a Llama-style tokenizer (adds BOS) and one that adds nothing.
"""

import pytest

from sami_ray.engines.base import encode_pair as engine_encode_pair
from sami_ray.sami.constitutions import Constitution
from sami_ray.sami.data import Query, SamiExample, tokenize_example
from sami_ray.sami.tokens import encode_pair, encode_prompt, truncate_prompt
from tests.support.tiny_models import build_tokenizer

PROMPT = "Be brief.\nHow do I bake bread? Answer:"
RESPONSES = [" Mix the flour and water.", " Use bullet steps: first bake the bread."]


@pytest.fixture(scope="module")
def toks():
    return {"plain": build_tokenizer(), "bos": build_tokenizer(add_bos=True)}


def _example(n=2):
    cons = [Constitution(f"c{i}", (), f"Rule {i}.") for i in range(n)]
    return SamiExample(Query("q", "How do I bake bread?"), cons, RESPONSES[:n], [PROMPT] * n)


def test_engines_use_the_shared_helper():
    assert engine_encode_pair is encode_pair


def test_bos_tokenizer_puts_bos_first_in_prompts_only(toks):
    tok = toks["bos"]
    bare = tok(PROMPT, add_special_tokens=False)["input_ids"]
    p, r = encode_pair(tok, PROMPT, RESPONSES[0])
    assert p == [tok.bos_token_id] + bare
    assert p == tok(PROMPT)["input_ids"], "what the tokenizer (and vLLM) does for a text prompt"
    assert r == tok(RESPONSES[0], add_special_tokens=False)["input_ids"] and tok.bos_token_id not in r
    ex = tokenize_example(tok, _example())
    assert ex.prompt_ids == [p, p]
    assert ex.response_ids[0] == r + [tok.eos_token_id]
    assert tokenize_example(tok, _example(), add_eos=False).response_ids[0] == r


def test_plain_tokenizer_adds_nothing(toks):
    tok = toks["plain"]
    bare = tok(PROMPT, add_special_tokens=False)["input_ids"]
    p, r = encode_pair(tok, PROMPT, RESPONSES[1])
    assert p == bare and p[0] != tok.bos_token_id
    assert r == tok(RESPONSES[1], add_special_tokens=False)["input_ids"]
    assert tokenize_example(tok, _example()).prompt_ids == [bare, bare]


def test_empty_prompt_falls_back_to_bos(toks):
    for tok in toks.values():
        assert encode_prompt(tok, "") == [tok.bos_token_id]
    assert encode_pair(toks["plain"], "", " a")[0] == [toks["plain"].bos_token_id]


def test_max_prompt_tokens_cuts_from_the_left_keeping_bos(toks):
    for name, tok in toks.items():
        full = encode_prompt(tok, PROMPT)
        cut = tokenize_example(tok, _example(), max_prompt_tokens=5).prompt_ids[0]
        assert len(cut) == 5
        if name == "bos":
            assert cut == [tok.bos_token_id] + full[-4:]
        else:
            assert cut == full[-5:]
        assert tokenize_example(tok, _example(), max_prompt_tokens=len(full)).prompt_ids[0] == full
    assert truncate_prompt([1, 5, 6, 7], 1, bos_token_id=1) == [1]
    assert truncate_prompt([1, 5, 6, 7], 3, bos_token_id=None) == [5, 6, 7]
