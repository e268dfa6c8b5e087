# Nautilus: everything is installed from nothing by these targets.
#   make test    venv + dependencies + OpenSSL 3.5 (if needed) + C core, then pytest
#   make bench   benchmarks (pytest-benchmark primitives + raw EVP driver, then the comparison
#                with ssl and plaintext: table, benchmarks/results/latest.json and latest.png);
#                QUICK=1: a short run (under 2 minutes)
#   make bench-transport  only the comparison with ssl and plaintext (QUICK=1 too)
#   make bench-rr-floor   request/response: the bare-asyncio floor beside plain, ssl, Nautilus
#   make lint    ruff check, ruff format --check, mypy --strict
#   make asan    rebuild the C core with ASan/UBSan and run the test suite on it
#   make clean   remove build products (keeps the OpenSSL build); distclean: all

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.nautilus-deps
NATIVE_STAMP := build/.native-built
C_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/cdef/*.h) build_ffi.py nautilus/_version.py
PYTEST_ARGS ?=
ASAN_DIR := build/asan

.PHONY: all build openssl test bench bench-transport bench-rr-floor bench-micro lint format asan clean distclean

all: build

$(DEPS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=77" wheel "cffi>=1.17"
	$(PY) -m pip install -q -e ".[test,dev]" --no-build-isolation --config-settings editable_mode=compat
	mkdir -p build && touch $(NATIVE_STAMP) $@

openssl: $(DEPS_STAMP)
	$(PY) build_ffi.py --openssl

$(NATIVE_STAMP): $(DEPS_STAMP) $(C_SOURCES)
	$(PY) build_ffi.py --openssl
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(NATIVE_STAMP)

# The asyncio adapter's tests run a second time on uvloop (the test extra installs it).
UVLOOP_TESTS := tests/test_asyncio.py tests/test_asyncio_adversarial.py tests/test_asyncio_ending.py \
	tests/test_asyncio_flow.py tests/test_asyncio_receive.py tests/test_channel.py tests/test_node.py \
	tests/test_message_lane.py tests/test_early_data.py tests/test_server_flight.py

# Where the CPU runs Nautilus's own AES-GCM (csrc/nt_gcm.c), the record tests run a
# second time on OpenSSL's.
RECORD_TESTS := tests/test_record.py tests/test_record_packed.py tests/test_record_properties.py \
	tests/test_lane_native.py tests/test_seal_send.py

test: build
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ "$$($(PY) -c 'import nautilus._bindings as b; print(b.aes_gcm_code())')" = vaes-avx2 ]; then \
	  echo "The record tests again, on OpenSSL's AES-GCM (the run above used Nautilus's own):"; \
	  NAUTILUS_AES_GCM=openssl $(PY) -m pytest -q $(RECORD_TESTS); \
	else echo "AES-GCM ran on OpenSSL's code (this CPU cannot run Nautilus's own)"; fi
	@if $(PY) -c "import uvloop" 2>/dev/null; then \
	  echo "The asyncio tests again, on uvloop:"; \
	  NAUTILUS_TEST_LOOP=uvloop $(PY) -m pytest -q $(UVLOOP_TESTS); \
	else echo "uvloop is not installed: the asyncio tests ran on asyncio's own loop only"; fi

# QUICK=1 (or yes/true): short bounds everywhere.
BENCH_QUICK = $(if $(filter-out 0 no false,$(QUICK)),--quick)
# The chart needs matplotlib (the `bench` extra); without it the chart is skipped, never the run.
BENCH_CHART = $(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q "matplotlib>=3.5" \
	  || echo "matplotlib could not be installed: the benchmarks will run without the chart"

bench: build
	@$(BENCH_CHART)
	$(PY) benchmarks/run_primitives.py $(BENCH_QUICK)
	$(PY) benchmarks/compare.py $(BENCH_QUICK) --primitives benchmarks/results/latest-primitives.json

bench-transport: build
	@$(BENCH_CHART)
	$(PY) benchmarks/compare.py $(BENCH_QUICK)

bench-rr-floor: build
	$(PY) benchmarks/rr_floor.py

bench-micro: build
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,ops -q

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(DEPS_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The sanitized build goes into a copy of the package so that it never mixes
# with the normal one; the interpreter is not sanitized, so libasan is preloaded,
# and PYTHONMALLOC=malloc: Python's own pools (blocks up to 512 bytes) would
# hide an overflow of a small buffer from ASan.
asan: $(DEPS_STAMP)
	$(PY) build_ffi.py --openssl
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r nautilus csrc tests docs build_ffi.py setup.py pyproject.toml README.md $(ASAN_DIR)/
	rm -f $(ASAN_DIR)/nautilus/_native*.so
	cd $(ASAN_DIR) && NAUTILUS_OPENSSL_DIR=$${NAUTILUS_OPENSSL_DIR:-$(CURDIR)/build/openssl} \
	  NAUTILUS_SANITIZE=1 $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONMALLOC=malloc \
	  PYTHONPATH=$(CURDIR)/$(ASAN_DIR) $(CURDIR)/$(PY) -m pytest -p no:cacheprovider -q tests \
	  --ignore=tests/test_bench_smoke.py

clean:
	rm -rf build/temp* build/lib* $(ASAN_DIR) $(NATIVE_STAMP) nautilus/_native*.so nautilus/_native.c \
	  .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf build $(VENV)
