# The two commands of the README: `sudo make demo` and `sudo make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo test unit fuzz bench clean

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

# The recording reader and the whole report path under hypothesis for longer than make test
# does (60 examples there); failing examples are kept in tests/fuzz-corpus/ and replayed first.
FUZZ_EXAMPLES ?= 62000  # per target: both took 28 minutes on the development VM
fuzz: setup-test
	TCPCLOSE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -ra -p no:cacheprovider tests/unit/test_fuzz_report.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo-out

# A quick look by default (bench/README.md).  The README's OVERHEAD table says the BENCH_ARGS
# its rows came from, and names each rows file in bench/results/.
BENCH_ARGS ?= --seconds 10 --repeats 1 --rates 0,6000
bench: setup
	$(PY) -m bench $(BENCH_ARGS)
