# nodecache developer entry points. Everything a newcomer needs is `make run`
# and `make test`; both create the virtualenv when it is missing.

PYTHON   ?= python3
VENV     ?= .venv
VPY      := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
RUN_PORT ?= 5353
ZONE_PORT ?= 5354
NODE_RESOLV_CONF ?= /etc/resolv.conf

# Debian packages the integration tests and benchmarks drive for real:
# NSD (authoritative upstream), dig and kdig (clients), dnsperf (load),
# dnsmasq and unbound (peers in `make bench`), iptables and iproute2 (netns tests),
# musl-tools (musl-gcc: a static musl getaddrinfo client, which has no TCP fallback).
DEB_PACKAGES := nsd bind9-dnsutils knot-dnsutils dnsperf dnsmasq-base unbound iptables iproute2 musl-tools

.PHONY: help venv debs run test bench bench-load profile lint clean image manifest docs

help:
	@echo "make run    start the agent on 127.0.0.1:$(RUN_PORT) in front of a sample cluster zone"
	@echo "make test   install what the tests need (venv, Debian packages) and run them all"
	@echo "make bench  dnsperf side by side: nodecache, dnsmasq, unbound"
	@echo "make bench-load  upstream queries per glibc lookup through no cache, dnsmasq, unbound, nodecache (root)"
	@echo "make profile  cProfile of the hit path (fails if dnslib runs on a hit)"
	@echo "make lint   ruff and mypy"
	@echo "make docs   regenerate docs/reference.md (flags and metrics) from the code"
	@echo "make image  build the container image $(IMAGE) with docker or podman"
	@echo "make manifest ARGS='--dns-server IP [--ipvs] [--image REF]'  print daemonset.yaml rendered for a cluster"

# The editable install compiles nothing (NODECACHE_COMPILE=0): $(COMPILED) does, in place, and again
# whenever one of the compiled modules' sources changes.
$(STAMP): setup.cfg pyproject.toml setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools
	NODECACHE_COMPILE=0 $(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The hot-path modules (setup.cfg [nodecache:compiled]) as C extensions beside their sources, built by
# mypyc (about a minute; docs/performance.md, "Compiled modules"). Python loads a compiled module before
# its source, so a stale one would hide an edit: this rebuilds on any change, and the tests refuse to run
# on a stale one. --force: mypyc leaves C it would write unchanged alone (an edit to a comment), and the
# library must still be newer than every source for that check. NODECACHE_PURE_PYTHON=1 runs the sources
# without rebuilding.
COMPILED_SRC := $(shell sed -n '/^\[nodecache:compiled\]/,/^\[/s/^ *\(nodecache\/[a-z_]*\.py\)$$/\1/p' setup.cfg)
COMPILED     := $(VENV)/.compiled

$(COMPILED): $(STAMP) $(COMPILED_SRC) nodecache/mmsgabi.py
	@echo "compiling $(words $(COMPILED_SRC)) hot-path modules with mypyc, and mmsg's cffi calls (about a minute)"
	$(VPY) setup.py -q build_ext --inplace --force
	touch $(COMPILED)

venv: $(COMPILED)

# Idempotent: asks dpkg first and only runs apt-get when something is missing.
# As root it installs what is missing (CI). Any other user cannot, so it says what is
# missing and carries on: the tests that need those tools skip with the reason (pytest -ra).
debs:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	missing=$$(echo $$missing); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make debs: Debian packages not installed: $$missing"; \
	    echo "make debs: not root, so not installing them; the tests that need them will be skipped (run 'make debs' as root, or apt-get install them, to run those too)"; \
	    exit 0; \
	  fi; \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: $(COMPILED)
	$(VPY) -m tests.support.samplezone --run-agent --port $(RUN_PORT) --zone-port $(ZONE_PORT) --node-resolv-conf $(NODE_RESOLV_CONF)

# The import layering (setup.cfg [importlinter]) is checked first: a broken contract fails the run.
# The whole suite runs on the compiled hot path (what ships); then the tests of the compiled modules
# run again on their sources, the build a machine without a compiler installs.
PURE_TESTS := tests/test_wire.py tests/test_wire_fuzz.py tests/test_cache.py tests/test_prefetch.py \
	tests/test_resolver.py tests/test_forwarder.py tests/test_upstream.py tests/test_timers.py \
	tests/test_listeners.py tests/test_hitpath_variants.py tests/test_tcp_limits.py tests/test_logs.py tests/test_counters.py \
	tests/test_cache_memory.py tests/test_heap.py tests/test_mmsg.py

test: debs $(COMPILED)
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest -q -ra
	NODECACHE_PURE_PYTHON=1 $(VPY) -m pytest -q -ra $(PURE_TESTS)

bench: debs $(COMPILED)
	$(VPY) benchmarks/run.py

# Root only: pods and a node in network namespaces; ARGS passes options, e.g. ARGS='--lookups 3000'.
bench-load: debs $(COMPILED)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-load needs root: it creates network namespaces and a veth pair"; exit 2; fi
	$(VPY) benchmarks/load.py $(ARGS)

# Proves the hit path builds no dnslib objects: cProfile over 50,000 cache hits, on the compiled hot path
# (what ships) and on its sources (where cProfile also shows the path's own functions).
profile: debs $(COMPILED)
	$(VPY) benchmarks/profile_hit.py
	$(VPY) benchmarks/profile_hit.py --pure

lint: $(STAMP)
	$(VENV)/bin/ruff check nodecache tests benchmarks docs
	$(VENV)/bin/mypy nodecache tests/support/samplezone.py --ignore-missing-imports
	$(VENV)/bin/lint-imports

# docs/reference.md from the click commands and the metrics collector; tests/test_docs.py fails when it drifts.
docs: $(STAMP)
	$(VPY) docs/gen_reference.py

# The container image, with whichever engine answers (`docker info` / `podman info`).
VERSION := $(shell sed -n 's/^version *= *//p' setup.cfg)
IMAGE   ?= nodecache:$(VERSION)

image:
	@if docker info >/dev/null 2>&1; then engine=docker; \
	elif podman info >/dev/null 2>&1; then engine=podman; \
	else echo "make image: neither docker nor podman is available here (docker info and podman info both failed); build the Dockerfile on a machine with a container engine"; exit 1; fi; \
	echo "$$engine build -t $(IMAGE) ."; $$engine build -t $(IMAGE) .

# e.g. make manifest ARGS='--dns-server 192.0.2.10 --ipvs' > node-local-dns.yaml
manifest: $(STAMP)
	@$(VENV)/bin/nodecache manifest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info build nodecache/*.so
