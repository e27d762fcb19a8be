# passt-sep: set-up, demo and tests on a fresh Debian machine (run as root).
#   make demo   install everything, then run the demo on a private topology
#   make test   install everything, then run the whole test suite
#   make bench  install everything and the peers, then run the benchmarks
#   make soak   install everything, then ten minutes of mixed load (not in `make test`)

SHELL := /bin/bash
PYTHON := /usr/bin/python3
# The venv must be usable by every uid (rootless tests run as 65534): inside
# the checkout when others can traverse it, else under /var/tmp.
VENV ?= $(shell if setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$(CURDIR)" 2>/dev/null; \
	then echo "$(CURDIR)/.venv"; else echo "/var/tmp/passt-sep-venv-$$(echo $(CURDIR) | md5sum | cut -c1-8)"; fi)
APT_PACKAGES := python3-venv python3-dev libcap-dev libseccomp2 gcc iproute2 socat iperf3 \
	busybox-static libc6-dev iputils-ping isc-dhcp-client ndisc6 nftables dnsutils tshark groff \
	man-db apparmor checkpolicy semodule-utils util-linux procps curl qemu-system-x86 \
	linux-image-cloud-amd64 tayga
# From bookworm-backports (same Debian registry): QEMU 10 (7.2 crashes on
# vhost-user under TCG) and libvirt 11.3 (Debian 12's 9.0 has passt disabled).
BACKPORTS_LIST := /etc/apt/sources.list.d/passt-sep-bookworm-backports.sources
BACKPORTS_PACKAGES := qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
# the stamp names the package lists: adding a package installs again
DEPS_STAMP := $(VENV)/.apt-$(shell echo $(APT_PACKAGES) $(BACKPORTS_PACKAGES) | md5sum | cut -c1-8)
PYTEST_ARGS ?=

export PASST_SEP_VENV := $(VENV)

.PHONY: all deps venv install test unit demo bench lint clean

all: test

$(DEPS_STAMP):
	if . /etc/os-release && [ "$$VERSION_CODENAME" = bookworm ] && \
		! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then \
		printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
		'Suites: bookworm-backports' 'Components: main' \
		'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > $(BACKPORTS_LIST); fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	if grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-t bookworm-backports $(BACKPORTS_PACKAGES); \
	else DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		$(BACKPORTS_PACKAGES); fi
	mkdir -p $(VENV) && touch $@

deps: $(DEPS_STAMP)

$(VENV)/bin/python: | $(DEPS_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

venv: $(VENV)/bin/python

# The seccomp programs are compiled from the installed allowlists, beside
# them (passt_sep/system/bpf.py): a start then arms them without building a
# filter; so are the dataclasses' methods (passt_sep/system/codecache.py)
# and the package's modules (passt_sep/system/bundle.py).
# -P: the installed package, not this checkout's.
install: venv
	$(VENV)/bin/pip install -q ".[test]" ruff
	$(VENV)/bin/python -P -m passt_sep.system.bpf $(VENV)/share/passt-sep/seccomp/*.$$(uname -m)
	$(VENV)/bin/python -P -m passt_sep.system.codecache
	$(VENV)/bin/python -P -m passt_sep.system.bundle
	chmod -R a+rX $(VENV)

# Distros ship /dev/net/tun as 0666; rootless tests rely on it.
test: install
	chmod 0666 /dev/net/tun
	$(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS) tests

unit: install
	$(VENV)/bin/python -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check passt_sep tests bench contrib

demo: install
	chmod 0666 /dev/net/tun
	$(VENV)/bin/python contrib/demo.py

# The current upstream passt beside the distro's: a build of it, by default
# the one the founding left beside this checkout (BENCH_PASTA_CURRENT=PATH
# names another; empty leaves it out).
BENCH_PASTA_CURRENT ?= $(wildcard $(CURDIR)/../shared/peers/passt-2025-01/passt)
export BENCH_PASTA_CURRENT

bench: install
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends passt slirp4netns strace
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/startup.py
	$(VENV)/bin/python bench/rr_profile.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache

# Fuzz every parser with atheris for a bounded time (fuzz/run.py; 60 s per
# target, as many at once as there are CPUs); the short CI round without
# atheris is tests/unit/test_fuzz_corpus.py.
.PHONY: fuzz
fuzz: install
	$(VENV)/bin/pip install -q atheris
	$(VENV)/bin/python fuzz/run.py --seconds 60

# Ten minutes of mixed load through pasta-sep (tests/soak.py): 1000 TCP
# connections opening and closing, UDP echo, DNS, ping; reports the worker's
# RSS and fd slopes and fails on any wrong byte or a worker restart.
# SOAK_SECONDS=120 make soak for a shorter round.
.PHONY: soak
soak: install
	$(VENV)/bin/python tests/soak.py
