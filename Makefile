# The two commands of the README. Both install what they need into .venv first.
.PHONY: demo test lint install

install:
	@bash deploy/install.sh

demo: install
	.venv/bin/alchimia demo $(ARGS)

# pytest exits 5 when it collects no test; make reports that as a failure, as it should.
test: install
	.venv/bin/pytest -q $(ARGS)

# mypy and lint-imports read the package `alchimia` as a wheel lays it out: .lint/alchimia/
# holds links to alchimia/'s files and to the folders mapped into it (setup.py's
# SUBPACKAGES), rebuilt on every run so that new files are seen.
SUBPACKAGES := agent coordinator broker models deploy

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	@rm -rf .lint && mkdir -p .lint/alchimia
	@for f in alchimia/*; do ln -s "../../$$f" .lint/alchimia/; done
	@for d in $(SUBPACKAGES); do ln -s "../../$$d" ".lint/alchimia/$$d"; done
	cd .lint && ../.venv/bin/lint-imports --no-logo ../pyproject.toml
	.venv/bin/mypy
