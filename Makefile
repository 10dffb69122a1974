# The commands the README names. `make install` is what every other target builds on.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The 0.x SDK, kept apart from the venv's own, for the wire-compatibility tests.
OLD_SDK := $(VENV)/sdk-0.75
ARGS ?=

.PHONY: install system-deps serve test soak fuzz check bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,local]'
	$(BIN)/python -m pip install --quiet --target $(OLD_SDK) 'anthropic==0.75.0'
	touch $(STAMP)

# What the suite needs from the system, from the distribution's packages: Chromium for the
# console tests, the PostgreSQL server binaries for the PostgreSQL store's tests (the tests
# start servers of their own). apt-get runs only where something is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@need=""; \
	[ -x /usr/bin/chromium ] || need="$$need chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	if [ -n "$$need" ]; then \
		echo "installing the distribution's$$need for the test suite"; \
		if ! command -v apt-get >/dev/null; then \
			echo "make test needs the packages$$need (no apt-get here: install them by hand)" >&2; \
			exit 1; \
		fi; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$need >/dev/null || \
		{ echo "could not install$$need: install them by hand (apt-get install$$need)" >&2; \
		  exit 1; }; \
	fi

serve: install
	$(BIN)/batchd serve $(ARGS)

test: install system-deps
	$(BIN)/pytest $(ARGS)

# The fault suite alone, for longer: SOAK_ROUNDS kill rounds per store (BATCHD_FAULT_SEED
# repeats a run); its figures go to soak-report.json.
SOAK_ROUNDS ?= 40
soak: install
	BATCHD_FAULT_ROUNDS=$(SOAK_ROUNDS) BATCHD_FAULT_REPORT=soak-report.json \
		$(BIN)/pytest tests/faults -o timeout=1800 $(ARGS)

# Bad input, security and load at soak size: random (not derandomized) examples, a longer load.
FUZZ_TESTS := tests/test_openapi.py tests/test_envelope_fuzz.py tests/test_limits.py \
	tests/test_security.py tests/test_isolation.py tests/test_load.py
fuzz: install
	BATCHD_FUZZ_RANDOM=1 BATCHD_FUZZ_EXAMPLES=$${BATCHD_FUZZ_EXAMPLES:-500} \
	BATCHD_LOAD_SECONDS=$${BATCHD_LOAD_SECONDS:-60} $(BIN)/pytest -s -p no:cacheprovider \
	-o timeout=1800 $(FUZZ_TESTS) $(ARGS)

check: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
