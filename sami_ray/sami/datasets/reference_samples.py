"""The SAMI reference's generated training data, read as a run's samples (`sampler.samples_file`).

Layout (janphilippfranken/sami, `experiments/tldr/generate.py`, read by its `train.py`): one JSON object keyed by
example id; each value lists that query's N entries, entry j holding the training prompt that states the j-th
constitution (already rendered: constitution and query) and the response sampled under it:

    {"0": [{"prompt": "...", "response": "...", "example_id": 0}, {"prompt": "...", ...}], "3": [...], ...}

The reference trains on exactly these texts, so prompts and responses are kept as they are and the trainer
tokenises them by our one rule (`sami.tokens`). Which principles each constitution negates is not in the file, so
the imported constitutions carry no signs: SAMI trains on them; DPO and SFT (which need the all-positive
constitution) find no pairs in them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import DataError
from ..constitutions import Constitution
from ..data import Query, SamiExample

NEEDED = ("prompt", "response")


def read_reference_samples(path: str | Path, source: str | None = None) -> list[SamiExample]:
    """Every example of a reference data file, in file order. `source` names the file in errors (e.g. its s3:// URI
    when `path` is a downloaded copy). A file in another layout raises one DataError naming the file, the example
    id, the fields found and the fields needed."""
    src = source or str(path)
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{src}: no such file (sampler.samples_file)") from None
    except UnicodeDecodeError:
        raise DataError(f"{src}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{src}: not a JSON file ({e.msg}, line {e.lineno}); the reference's generated data is one "
                        "JSON object {example_id: [{prompt, response}, ...]}") from None
    if not isinstance(data, dict):
        raise DataError(f"{src}: expected one JSON object keyed by example id ({{example_id: [{{prompt, response}}, "
                        f"...]}}), got a JSON {type(data).__name__}")
    examples = [_example(src, str(ex_id), entries) for ex_id, entries in data.items()]
    if not examples:
        raise DataError(f"{src}: no examples")
    n = examples[0].n
    odd = next((e for e in examples if e.n != n), None)
    if odd is not None:  # examples of one training batch need the same N
        raise DataError(f"{src}: example {odd.query.id!r} has {odd.n} entries, but example "
                        f"{examples[0].query.id!r} has {n}; every example needs the same number of constitutions")
    return examples


def _example(src: str, ex_id: str, entries: object) -> SamiExample:
    where = f"{src}: example {ex_id!r}"
    if not isinstance(entries, list):
        raise DataError(f"{where}: expected a list of {{prompt, response}} entries, got a JSON "
                        f"{type(entries).__name__}")
    if len(entries) < 2:
        raise DataError(f"{where}: has {len(entries)} entries; SAMI needs at least 2 (one per constitution)")
    prompts, responses = [], []
    for j, entry in enumerate(entries):
        have = sorted(entry) if isinstance(entry, dict) else f"a JSON {type(entry).__name__}"
        if not isinstance(entry, dict) or any(not isinstance(entry.get(f), str) for f in NEEDED):
            raise DataError(f"{where}: entry {j} has the fields {have}, but reference samples need "
                            f"{list(NEEDED)} (strings)")
        for f in NEEDED:
            if not entry[f].strip():
                raise DataError(f"{where}: entry {j}: '{f}' is empty")
        prompts.append(entry["prompt"])
        responses.append(entry["response"])
    # The constitutions are known only through the prompts that state them: no signs, no text of their own.
    constitutions = [Constitution(f"reference-{j}", (), "") for j in range(len(entries))]
    return SamiExample(Query(ex_id, ""), constitutions, responses, prompts)
