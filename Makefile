# The two commands of the README's quick start, and what they are made of.
PY := .venv/bin/python

.PHONY: install demo test lint bench
install:
	bash scripts/install.sh

demo: install
	.venv/bin/sami-ray run

test: install
	bash scripts/test.sh

lint: install
	.venv/bin/ruff check sami_ray tests benchmarks jobs

bench: install
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_sampler_pool.py
