# ModularForge Book: build the book and test the package and every notebook.
#   make book   -> _build/html/index.html
#   make test   -> lint, unit tests, nbval over every notebook, browser check (~8 min)
# `make help` lists every target.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NOTEBOOKS := $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' 2>/dev/null | sort)
VENDORED_JS := book/_extra/_static/widgets/require.js \
               book/_extra/_static/widgets/embed-amd.js \
               book/_extra/_static/mathjax/tex-mml-chtml.js
NBVAL_OPTS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
              --nbval-cell-timeout=900

.PHONY: help venv book lab quickstart test test-unit test-notebooks test-other-cpu lint format clean distclean execute-notebooks measurements studies gpu-measurements cpu-spread

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

venv: $(STAMP) ## Create .venv and install the pinned requirements (only when they change)

# Re-run pip only when requirements.txt or pyproject.toml is newer than the stamp.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

$(VENDORED_JS):
	@echo "missing $@: run scripts/vendor_widgets_js.sh (needs npm)" >&2; exit 1

book: venv $(VENDORED_JS) ## Build the HTML book into _build/html (warnings are errors)
	$(BIN)/jupyter-book build -W -n --keep-going .
	@echo "Open _build/html/index.html"

# JupyterLab on book/, with .venv's Python as the notebooks' kernel (the package is
# installed there in editable mode, so the chapters import this checkout). With
# JUPYTER_PREFER_ENV_PATH=1 the kernel found in .venv wins over a user-level `python3`
# kernel that would run another Python. JupyterLab refuses to run as root unless told
# (containers often are root): --allow-root is passed only then. More options:
# LAB_OPTS (e.g. --no-browser).
LAB_OPTS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: venv ## Open the chapters (book/) in JupyterLab, run with .venv's Python
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/python -m jupyterlab --ServerApp.root_dir=book $(LAB_ROOT) $(LAB_OPTS)

# The quickstart chapter, run in a fresh kernel and printed to the terminal as Markdown: the
# code it teaches, the training progress and, at the end, the text each expert writes.
quickstart: venv ## Train a small model in parts and print what each expert writes (~2 min)
	cd book && ../$(BIN)/jupyter nbconvert --to markdown --execute --stdout \
	  --ExecutePreprocessor.timeout=900 00_quickstart.ipynb

lint: venv ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv ## Fix what ruff can fix and format the code and notebooks
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two pytest lanes side by side, one core and one thread each (the suite is almost all
# single-threaded, and two-thread kernels on a shared core spin-wait): the unit tests in
# tests/, and nbval over every notebook in book/ plus the book build rendered in headless
# Chromium. Each lane prints its report when it ends. Screenshots land in
# test-artifacts/screenshots/. The reruns under other CPU kernels are their own target.
LANE := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -p no:cacheprovider
test: lint $(VENDORED_JS) ## Lint, unit tests, nbval over every notebook, book render check (~8 min)
	@echo "== two lanes, one core each: unit tests | notebooks + rendered book (each reports when done)"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-unit test-notebooks

test-unit: venv ## The unit tests alone (tests/, without the book render and the other-CPU reruns)
	$(LANE) tests -m "not other_cpu and not book"

test-notebooks: venv $(VENDORED_JS) ## nbval over every notebook, and the book rendered in Chromium
	$(LANE) $(NBVAL_OPTS) book tests/book/test_book_render.py

# The training chapters rerun under capped vector kernels and another thread count, and
# planted regressions that must fail them (about 5 minutes; CI runs it after `make test`).
test-other-cpu: venv ## Chapters 3 and 8 on two simulated CPUs, with negative controls (~5 min)
	$(BIN)/python -m pytest -p no:cacheprovider -m other_cpu tests/book/test_other_cpu.py

execute-notebooks: venv ## Re-run every notebook in place, storing fresh outputs (maintainers)
	@set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(BIN)/jupyter execute --inplace --timeout=1800 "$$nb"; \
	done
	$(BIN)/python scripts/strip_execution_metadata.py $(NOTEBOOKS)

# The measured figures the book loads from book/data/. Each file records the command
# that made it; these are those commands. About an hour on 2 CPU cores. Run on a
# quiet machine (timings are stored), then `make execute-notebooks` and `make test`.
MF := $(BIN)/python -m modularforge
measurements: venv ## Regenerate book/data/ (benchmarks, lean ladder, tiny pipeline x 3 seeds, layout study; ~1 h)
	$(MF) bench --preset seed --batch-size 4 --seq-len 256 --steps 10 --warmup 1 --device cpu \
	  --json book/data/bench-cpu-seed-4x256.json
	@# The same on one thread, timed by the process's CPU time: the roofline fraction that
	@# other processes on the machine do not move.
	OMP_NUM_THREADS=1 $(MF) bench --preset seed --batch-size 4 --seq-len 256 --steps 10 --warmup 1 \
	  --device cpu --clock cpu --json book/data/bench-cpu-seed-4x256-1thread.json
	$(MF) bench --preset seed --batch-size 16 --seq-len 512 --steps 1 --warmup 1 --device cpu \
	  --micro-batch-size 1 --loss-chunk 32 --checkpoint-layers --recompute-expert --fused-adamw \
	  --json book/data/bench-cpu-seed-lean.json
	$(MF) ladder --preset seed --batch-size 16 --seq-len 512 --micro-batch-size 1 --loss-chunk 32 \
	  --one-buffer-chunk 128 --rounds 3 --json book/data/lean-ladder-cpu-seed.json
	rm -rf book/data/pipeline-tiny
	$(MF) pipeline --preset tiny --no-progress --out book/data/pipeline-tiny
	@# Not shipped: the dense baseline's weights and the resume state (the manifest keeps
	@# the dense model's scores, which is all chapter 9 reads).
	rm -rf book/data/pipeline-tiny/dense book/data/pipeline-tiny/state
	@# The same run with seeds 1 and 2 (not shipped; about 10 minutes each), then the
	@# seed study chapter 9 reads: every row as mean and spread over the three seeds.
	for seed in 1 2; do \
	  rm -rf runs/pipeline-tiny-seed$$seed; \
	  $(MF) pipeline --preset tiny --no-progress --seed $$seed --out runs/pipeline-tiny-seed$$seed \
	    || exit 1; \
	done
	$(MF) pipeline-seeds book/data/pipeline-tiny runs/pipeline-tiny-seed1 runs/pipeline-tiny-seed2 \
	  --json book/data/pipeline-tiny-seeds.json
	@# Chapter 5's expert-layout study: 3 seeds x (phase 1 + 3 trained arms + the zero-FFN
	@# control) at 4 layers, on one thread (about 13 minutes).
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch05_layout_study --json book/data/layout-study-tiny.json

# Chapter 11's learning-rate sweeps (tuning seeds 100 and 101), its five-seed study at the
# rates they chose and two one-change reruns, and chapter 11b's new-domain study: each on
# one thread (about 2 h in all on one core; the sweeps come first, then any two at once).
studies: venv ## Regenerate chapters 11 and 11b's studies (~2 h of one core)
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11_lr_sweep --json book/data/lr-sweep-tiny.json \
	  --lr 0.01 --dense-grid 0.005 0.01 0.02 --later-grid 0.0003 0.001 0.003
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11_lr_sweep \
	  --json book/data/lr-sweep-tiny-dense-low.json --dense-grid 0.0025 0.00125 --later-grid
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11_lr_sweep \
	  --json book/data/lr-sweep-tiny-later.json --lr 0.0025 --dense-grid \
	  --later-grid 0.0001 0.0003 0.001 0.003 0.01
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11_mixture_study \
	  --json book/data/mixture-study-5seeds.json --seeds 0 1 2 3 4 --lr 0.0025 --later-lr 0.003
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11_mixture_study \
	  --json book/data/mixture-study-5seeds-raw-router.json --seeds 0 1 2 3 4 --lr 0.0025 \
	  --later-lr 0.003 --router-input raw --no-dense-eqflops --reuse-dense book/data/mixture-study-5seeds.json
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11_mixture_study \
	  --json book/data/mixture-study-5seeds-continue.json --seeds 0 1 2 3 4 --lr 0.0025 \
	  --later-lr 0.00025 --no-dense-eqflops --reuse-dense book/data/mixture-study-5seeds.json
	OMP_NUM_THREADS=1 $(BIN)/python -m modularforge.chapters.ch11b_new_domain --json book/data/new-domain-study.json

# How far the training chapters' trained numbers move on another CPU: reruns them under
# capped vector kernels (AVX2, plain) and 1 or 2 threads, compares with the stored
# outputs, and writes the tolerances the notebook test applies (about 10 minutes).
# Run after `make execute-notebooks` whenever a training chapter changes, then
# `make execute-notebooks` again so the chapters print the new tolerances.
TOLERANT_NOTEBOOKS = $(shell grep -l '"cpu_tolerance"' $(NOTEBOOKS) 2>/dev/null)
cpu-spread: venv ## Measure trained numbers across CPU kernels/threads into book/data/cpu-spread.json (~10 min)
	$(BIN)/python scripts/measure_cpu_spread.py $(TOLERANT_NOTEBOOKS)

# The CUDA figures (about 5 minutes on one GPU): bench at the seed preset in fp32 and
# bf16 autocast with the machine's matmul lines, the lean ladder, peaks from
# torch.cuda.max_memory_allocated, and a memory snapshot (runs/gpu/*.pickle, opened
# by https://pytorch.org/memory_viz). Refuses with a message where there is no CUDA.
gpu-measurements: venv ## CUDA figures into book/data/*-cuda-*.json (needs a GPU; ~5 min)
	$(BIN)/python -m modularforge.measure.gpu_measurements --out-dir book/data

clean: ## Remove build outputs and caches (keeps .venv)
	rm -rf _build test-artifacts .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -not -path './.venv/*' -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
