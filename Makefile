# The two commands of the README:
#   make up    - set up everything, then run a local LILA network (coordinator + peers) on the bundled data
#   make test  - set up everything, then run the test suite
# `make install` alone does the set-up (Debian packages when run as root, .venv, torch, the project).

PY := .venv/bin/python
STAMP := .venv/.lila-installed

.PHONY: install up test lint
install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

up: $(STAMP)
	.venv/bin/lila up

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	.venv/bin/ruff check .
