# The two commands of the README: `sudo make demo` and `sudo make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo test unit bench clean

setup:
	./scripts/provision.sh

setup-test:
	./scripts/provision.sh --test

demo: setup
	$(VENV)/bin/tcpclose demo -o demo-out

# TCPCLOSE_REQUIRE_BPF turns a skipped live test into a failure: on this kind
# of machine the BPF tests must run; TCPCLOSE_REQUIRE_BROWSER the same for the
# test that opens report.html in chromium.
test: setup-test
	TCPCLOSE_REQUIRE_BPF=1 TCPCLOSE_REQUIRE_BROWSER=1 $(PY) -m pytest -ra

unit: setup
	$(PY) -m pytest -ra -m "not live and not browser and not slow"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo-out

# A quick look by default (bench/README.md).  The README's OVERHEAD table is BENCH_ARGS="--seconds 60
# --repeats 8 --rates 0 --modes 'untraced,empty program,tcpclose,tcpclose --aggregates,tcpstates,untraced again'".
BENCH_ARGS ?= --seconds 10 --repeats 1 --rates 0,6000
bench: setup
	$(PY) -m bench $(BENCH_ARGS)
