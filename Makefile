# The two commands of the README. Both install what they need into .venv first.
.PHONY: demo test lint install

install:
	@bash deploy/install.sh

demo: install
	.venv/bin/alchimia demo $(ARGS)

# pytest exits 5 when it collects no test; make reports that as a failure, as it should.
test: install
	.venv/bin/pytest -q $(ARGS)

lint: install
	.venv/bin/ruff check .
	.venv/bin/lint-imports --no-logo
	.venv/bin/mypy
