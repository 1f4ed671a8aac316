# Two commands set everything up on a fresh machine: `make paper` and `make test` (see README.md).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Console scripts and papermill's kernel must come from the project's environment.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONUNBUFFERED := 1
# Quieten TensorFlow's C++ start-up logging (CUDA probing, oneDNN notices) in notebooks and tests.
export TF_CPP_MIN_LOG_LEVEL := 2
PROFILE ?= teaching
PAPER_ARGS ?=
# Runs a command with TensorFlow's start-up lines kept off the console (tools/quiet.py); `QUIET=` shows them.
QUIET ?= $(PY) tools/quiet.py

.PHONY: paper test sync book bench lab install

# (Re)install when the environment is missing or settings.ini / setup.py changed since the last install.
$(STAMP): settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing medcnn_nb and its tooling into $(VENV) (pip install -e '.[dev]') ..."
	@start=$$(date +%s); \
	 $(PY) -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true; \
	 $(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v '^WARNING: Location'; \
	 test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	 $(PY) -m ipykernel install --sys-prefix --name medcnn_nb --display-name "medcnn_nb (.venv)" >/dev/null; \
	 echo "install took $$(( $$(date +%s) - start )) s"
	@touch $(STAMP)

install: $(STAMP)

paper: $(STAMP)
	$(VENV)/bin/medcnn-paper --profile $(PROFILE) $(PAPER_ARGS)

# Regenerate the library, the cleaned notebooks and README.md from the notebooks.
sync: $(STAMP)
	$(PY) tools/nbsync.py

test: $(STAMP)
	@start=$$(date +%s); \
	 $(PY) tools/nbsync.py --check && \
	 $(QUIET) $(VENV)/bin/nbdev_test --n_workers 2 --timing && \
	 $(QUIET) $(PY) -m pytest && \
	 echo "make test took $$(( $$(date +%s) - start )) s"

# Execute the chapters on the phantoms and render the static HTML book into book/.
book: $(STAMP)
	$(PY) tools/build_book.py $(BOOK_ARGS)

# Speed measurements (numbers for the issues and the README); none of them is a test.
bench: $(STAMP)
	$(QUIET) $(PY) bench/bench_lidc_load.py
	$(QUIET) $(PY) bench/bench_brats.py
	$(QUIET) $(PY) bench/bench_loader.py --profile teaching
	$(QUIET) $(PY) bench/bench_models.py --sizes 64,512 --batch 16,2 --base-filters 8 --depth 3
	$(QUIET) $(PY) bench/bench_metrics.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=nbs $$( [ "$$(id -u)" = 0 ] && echo --allow-root )
