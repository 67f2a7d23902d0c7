# Two commands: `make run` starts the bot, `make test` runs lint and the whole test suite.
# Each one creates .venv and installs the pinned dependencies on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint install bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/imagine-bot run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Four workers: the tests mostly wait (on sockets, subprocesses, sleeps). The few that hold the bot to the
# fake upstream's exact windows run afterwards on their own: on a CPU starved by four workers a request can
# reach the fake later than the limiter's margin allows for, which is the machine's doing, not the bot's.
test: lint
	$(BIN)/pytest -n 4 -m "not exact_limits"
	$(BIN)/pytest -m exact_limits

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache
