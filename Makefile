# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CPU := torch==2.13.0
TORCH_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: setup demo test test-fast test-cpu-paths lint bench clean

setup: $(STAMP)

# Install the CPU torch wheel first so the broad `torch>=2.1` requirement is already met
# and pip never resolves the 5.5 GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_CPU) || \
		$(BIN)/python -m pip install -q --index-url $(TORCH_INDEX) $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/sfpk oneshot --data mnist1d --model cnn1d --method sfpk --sparsity 0.95 \
		--demo --overwrite --out runs/demo

test: setup
	$(BIN)/python -m pytest

# Everything but the tests marked slow (see pyproject.toml); `make test` runs them all.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The tests under the kernels other CPUs get (docs/reliability.md, "Every CPU"): PyTorch's
# own kernels (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA, bf16 and conv) and MKL's
# (MKL_ENABLE_INSTRUCTIONS, fp32 matmul) capped at AVX2, then at no vector extension.
# `make test-cpu-paths CPU_PATHS_ARGS=` runs the slow tests too.
CPU_PATHS_ARGS ?= -m "not slow"
test-cpu-paths: setup
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(BIN)/python -m pytest $(CPU_PATHS_ARGS)
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
		$(BIN)/python -m pytest $(CPU_PATHS_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/step_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache
