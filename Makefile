# The two commands of the README. Both install what they need into .venv first.
.PHONY: demo test lint install

install:
	@bash deploy/install.sh

demo: install
	.venv/bin/alchimia demo $(ARGS)

# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: install
	.venv/bin/pytest -q $(ARGS)

lint: install
	.venv/bin/ruff check .
