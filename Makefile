# The two commands of a fresh machine: `make demo` and `make test`. Both use one venv with the
# package's `dev` and `train` extras (the demo trains a model; the tests train and plot).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench fuzz clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,train]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/aki-alert demo

bench: $(STAMP)
	$(PY) -m benchmarks

# Coverage-guided fuzzing of decode -> parse -> decide (tests/fuzz/fuzz_ingest.py) for a bounded
# time. atheris is installed here, into the venv, not with the dev dependencies: `make test`
# does not need it. New inputs go to .fuzz/corpus, a crash or hang to .fuzz/ (add it to
# tests/corpus as a regression case).
FUZZ_SECONDS ?= 60
ATHERIS_VERSION := 3.0.0
fuzz: $(STAMP)
	$(PY) -m pip install --quiet 'atheris==$(ATHERIS_VERSION)'
	mkdir -p .fuzz/corpus
	$(PY) tests/fuzz/fuzz_ingest.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-rss_limit_mb=2048 -dict=tests/fuzz/hl7.dict -artifact_prefix=.fuzz/ -print_final_stats=1 \
		.fuzz/corpus tests/corpus

clean:
	rm -rf $(VENV) build *.egg-info .fuzz
