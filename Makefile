# make demo | make test | make install
PY      := .venv/bin/python
STAMP   := .venv/.installed
# torch is named in the same pip command as everything else: left to the resolver,
# peft/accelerate pull a 5 GB CUDA build. torchvision is never installed on CPU
# (PyPI's build breaks transformers next to the CPU torch).
PIP_INSTALL := .venv/bin/pip install --disable-pip-version-check -q \
	-c requirements/constraints.txt torch==2.13.0 -e '.[train,dev]'

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP_INSTALL)
	touch $(STAMP)

demo: install
	$(PY) -m slakevqa demo

test: install
	$(PY) -m ruff check src tests benchmarks *.py
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache
