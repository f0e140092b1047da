# mgpu: build, test, benchmark and install the one-file `mgpu` executable (a self-extracting
# PyInstaller one-dir build: see build-config/launcher.sh).
# `make` alone lists the targets.

# Tests and benches run with the build venv's interpreter (pinned requirements, pytest included),
# made from BUILD_PYTHON on first use: `make test` needs no ambient pytest.
PYTHON ?= $(BUILD_VENV)/bin/python
# The interpreter the build venv is made from; its libpython goes into the binary.
BUILD_PYTHON ?= python3
PYTEST_ARGS ?=

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR := $(DESTDIR)$(PREFIX)/bin
CONFDIR := $(DESTDIR)/etc/mgpu
UNITDIR := $(DESTDIR)/etc/systemd/system

BUILD_VENV := .venv-build
BUILD_STAMP := $(BUILD_VENV)/.requirements-installed
SPEC := build-config/mgpu.spec
LAUNCHER := build-config/launcher.sh
ASSEMBLE := build-config/assemble.py
# PyInstaller's one-dir build (exe `mgpu` + `_internal/`), packed into dist/mgpu.
ONEDIR := build/onedir/mgpu
# Where root's runs of the binary unpack it (one directory per build, never deleted by mgpu).
ROOT_CACHE := /var/cache/mgpu
# Everything the binary is made of: a change to any of these rebuilds it. Folders are listed too
# so that adding or removing a module also triggers a rebuild.
BUILD_INPUTS := $(SPEC) $(LAUNCHER) $(ASSEMBLE) $(shell find src build-config/hooks build-config/loader -name __pycache__ -prune -o \( -name '*.py' -o -name '*.dat' -o -type d \) -print 2>/dev/null)
UNITS := mgpu-master.service mgpu-node.service

.DEFAULT_GOAL := help
.PHONY: help test test-src test-e2e test-bin bench build install uninstall clean

help:
	@echo "mgpu make targets:"
	@echo "  make test        the whole suite: unit and e2e tests from source, then builds dist/mgpu (when"
	@echo "                   out of date) and runs the e2e tests again against it; PYTEST_ARGS='-k name -x'"
	@echo "  make test-src    unit and e2e tests from source only (no build)"
	@echo "  make test-e2e    only the end-to-end tests from source (real daemons in temporary directories)"
	@echo "  make test-bin    only the end-to-end tests against dist/mgpu (built when out of date)"
	@echo "  make bench       every bench/bench_*.py in turn; prints figures (exit 1 if a script failed)"
	@echo "  make build       the one-file executable dist/mgpu (own venv $(BUILD_VENV), pinned requirements.txt)"
	@echo "  make install     as root: $(PREFIX)/bin/mgpu, /etc/mgpu/mgpu.yaml (if none), systemd units"
	@echo "  make uninstall   as root: remove the binary, the units and $(ROOT_CACHE) (keeps /etc/mgpu and /var/lib/mgpu)"
	@echo "  make clean       remove build/, dist/, $(BUILD_VENV) and caches"
	@echo "variables: PYTHON=$(PYTHON) BUILD_PYTHON=$(BUILD_PYTHON) PREFIX=$(PREFIX) DESTDIR=$(DESTDIR)"

# The whole suite: from source, then the e2e tests again against the built binary (the tests
# that only make sense for the binary run there; they skip from source).
test: test-src test-bin

test-src: $(BUILD_STAMP)
	PYTHONPATH=src $(PYTHON) -m pytest -q test $(PYTEST_ARGS)

test-bin: dist/mgpu
	MGPU_BIN=dist/mgpu PYTHONPATH=src $(PYTHON) -m pytest -q test/e2e $(PYTEST_ARGS)

test-e2e: $(BUILD_STAMP)
	PYTHONPATH=src $(PYTHON) -m pytest -q test/e2e $(PYTEST_ARGS)

# Each script runs even when an earlier one failed; the target fails at the end if any did.
bench: $(BUILD_STAMP)
	@failed=""; \
	for script in $$(ls bench/bench_*.py | LC_ALL=C sort); do \
		echo "== $$script"; \
		PYTHONPATH=src $(PYTHON) $$script || failed="$$failed $$script"; \
		echo; \
	done; \
	if [ -n "$$failed" ]; then echo "make bench: failed:$$failed" >&2; exit 1; fi

# --- build -------------------------------------------------------------------------------------

build: dist/mgpu

# The build venv is (re)filled only when requirements.txt is newer than the stamp.
$(BUILD_STAMP): requirements.txt
	@command -v $(BUILD_PYTHON) >/dev/null || { echo "make build: $(BUILD_PYTHON) not found (set BUILD_PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@test -x $(BUILD_VENV)/bin/python || $(BUILD_PYTHON) -m venv $(BUILD_VENV) || { \
		echo "make build: '$(BUILD_PYTHON) -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(BUILD_VENV)/bin/python -m pip install --disable-pip-version-check --quiet -r requirements.txt
	touch $@

dist/mgpu: $(BUILD_STAMP) $(BUILD_INPUTS)
	@for tool in strip objdump ldd; do command -v $$tool >/dev/null || { \
		echo "make build: PyInstaller needs '$$tool' (on Debian: apt-get install binutils)" >&2; exit 1; }; done
	@# PYTHONHASHSEED=0: the same inputs give the same bytes (set constants are marshalled in
	@# hash order), so the same content hash and the same cache directory on the hosts.
	PYTHONHASHSEED=0 $(BUILD_VENV)/bin/python -m PyInstaller --noconfirm --log-level WARN --distpath $(dir $(ONEDIR)) --workpath build/work $(SPEC)
	$(BUILD_VENV)/bin/python $(ASSEMBLE) $(ONEDIR) $(LAUNCHER) dist/mgpu
	@# Smoke test in a throw-away cache: the first run unpacks, the second takes the fast path.
	@cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
		MGPU_CACHE_DIR=$$cache/mgpu dist/mgpu --version >/dev/null && \
		version=$$(MGPU_CACHE_DIR=$$cache/mgpu dist/mgpu --version) || { \
		echo "make build: dist/mgpu does not start" >&2; exit 1; }; \
	echo "built dist/mgpu ($$(du -m dist/mgpu | cut -f1) MB; unpacks once per user and build into ~/.cache/mgpu, as root $(ROOT_CACHE)): $$version"

# --- install (as root) -------------------------------------------------------------------------

# The binary is copied under a temporary name and renamed into place, so a command starting at
# that moment sees the old file or the new one, never half of one. The new binary unpacks into a
# new directory of the cache (named after its content hash): a daemon running from the old one
# keeps working, and is restarted here so that it runs the new version.
install:
	@test -x dist/mgpu || { echo "make install: dist/mgpu is missing: run 'make build' first" >&2; exit 1; }
	@if [ -n "$$(find src build-config -newer dist/mgpu -name '*.py' -print -quit)" ]; then \
		echo "make install: warning: dist/mgpu is older than src/: run 'make build' to include the changes" >&2; fi
	install -d -m 0755 $(BINDIR)
	install -m 0755 dist/mgpu $(BINDIR)/.mgpu.new
	mv -f $(BINDIR)/.mgpu.new $(BINDIR)/mgpu
	install -d -m 0755 $(CONFDIR)
	@if [ -e $(CONFDIR)/mgpu.yaml ]; then \
		install -m 0644 build-config/mgpu.yaml $(CONFDIR)/mgpu.yaml.example; \
		echo "kept the existing $(CONFDIR)/mgpu.yaml; the new example is $(CONFDIR)/mgpu.yaml.example"; \
	else \
		install -m 0644 build-config/mgpu.yaml $(CONFDIR)/mgpu.yaml; \
		echo "installed $(CONFDIR)/mgpu.yaml (every option commented out: edit to taste)"; \
	fi
	install -d -m 0755 $(UNITDIR)
	@for unit in $(UNITS); do \
		sed 's|/usr/local/bin/mgpu|$(PREFIX)/bin/mgpu|g' build-config/$$unit > $(UNITDIR)/.$$unit.new && \
		chmod 0644 $(UNITDIR)/.$$unit.new && mv -f $(UNITDIR)/.$$unit.new $(UNITDIR)/$$unit && \
		echo "installed $(UNITDIR)/$$unit"; \
	done
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload && echo "systemctl daemon-reload: done"; \
		for unit in $(UNITS); do \
			if systemctl is-active --quiet $$unit; then \
				systemctl try-restart $$unit && echo "restarted $$unit on the new binary (running jobs carry on)"; \
			fi; \
		done; \
	fi
	@# Unpacks the new build into $(ROOT_CACHE) now (with DESTDIR: into a throw-away cache).
	@if [ -z "$(DESTDIR)" ]; then version=$$($(BINDIR)/mgpu --version); else \
		cache=$$(mktemp -d) && version=$$(MGPU_CACHE_DIR=$$cache/mgpu $(BINDIR)/mgpu --version); rm -rf "$$cache"; fi; \
	echo "installed $(BINDIR)/mgpu: $$version"
	@echo "next steps:"
	@echo "  systemctl enable --now mgpu-master      start the scheduler now and at boot"
	@echo "  mgpu queue                              as any user: jobs and GPUs"

uninstall:
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
		for unit in $(UNITS); do \
			if systemctl is-enabled --quiet $$unit 2>/dev/null || systemctl is-active --quiet $$unit; then \
				echo "systemctl disable --now $$unit (its running jobs carry on)"; \
				systemctl disable --now $$unit; \
			fi; \
		done; \
	fi
	rm -f $(BINDIR)/mgpu $(addprefix $(UNITDIR)/,$(UNITS))
	rm -rf $(DESTDIR)$(ROOT_CACHE)
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload; fi
	@echo "removed $(BINDIR)/mgpu, $(DESTDIR)$(ROOT_CACHE) and the systemd units; users' own caches (~/.cache/mgpu) stay; kept /etc/mgpu (config) and /var/lib/mgpu (state and job records): remove them by hand if you want them gone"

clean:
	rm -rf build dist $(BUILD_VENV) .pytest_cache
	find src test bench -name __pycache__ -type d -prune -exec rm -rf {} +
