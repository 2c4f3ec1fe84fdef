# m3w: `make run` is the whole story on generated sample data; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PAGES  ?= 300
export HF_HUB_OFFLINE := 1

.PHONY: run demo corpus test test-fast lint fuzz bench clean

# Everything for the README's two commands: the pipeline, the trainer, HF backbones, Dask and the test tools,
# at the exact versions in constraints.txt (the wheel itself declares ranges).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,hf,dask,test]'
	touch $(STAMP)

# The whole story on CPU (about 6 minutes): sample crawl with lesson pages -> the three corpora (Beam, embedded
# runner) -> frozen pre-trained LM and ViT -> Flamingo on the weighted mix -> blind gap, gates, and in-context
# learning on held-out pages: made-up-word accuracy at 0/1/2/4 shots with 95% intervals, caption-slot accuracy.
run: $(STAMP)
	$(BIN)/m3w demo --workdir sample/demo --pages $(PAGES)

demo: run

# Only the corpus: sample crawl (our own generator) -> M3W corpus on the embedded runner -> summary.
corpus: $(STAMP)
	$(BIN)/m3w sample-crawl sample/crawl --pages $(PAGES)
	$(BIN)/m3w build m3w --input 'sample/crawl/*.warc.gz' --output sample/m3w

# ruff (pycodestyle, pyflakes, import order, justified blind excepts); part of `make test`, so CI enforces it.
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	bash tests/ensure_chromium.sh || echo "chromium could not be installed: the report screenshot test will skip"
	$(BIN)/python -m pytest -q

# Everything but the Beam builds and training runs (marked slow): under 3 minutes on 2 cores.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Bounded fuzz campaigns (FUZZ_SECONDS per target) on WARC reading, page extraction, image
# processing, video probing and WebVTT parsing; findings are saved as recipes in tests/fuzz/reproducers/
# and replayed by `make test`. Not part of `make test` (a seconds-long smoke run is).
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	cd tests && ../$(BIN)/python -m helpers.fuzzing run --target all --seconds $(FUZZ_SECONDS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf sample benchmarks/_work .pytest_cache
