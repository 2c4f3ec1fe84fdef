# m3w: `make run` builds a corpus from a generated sample crawl; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PAGES  ?= 300
export HF_HUB_OFFLINE := 1

.PHONY: run demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Sample crawl (our own generator) -> M3W corpus on the embedded DirectRunner -> summary.
run: $(STAMP)
	$(BIN)/m3w sample-crawl sample/crawl --pages $(PAGES)
	$(BIN)/m3w build m3w --input 'sample/crawl/*.warc.gz' --output sample/m3w

# The whole story on CPU (about 5 minutes): crawl -> three corpora -> frozen LM/ViT -> Flamingo -> blind gap.
demo: $(STAMP)
	$(BIN)/m3w demo --workdir sample/demo

test: $(STAMP)
	bash tests/ensure_chromium.sh || echo "chromium could not be installed: the report screenshot test will skip"
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf sample benchmarks/_work .pytest_cache
