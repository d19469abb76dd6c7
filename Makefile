# The README's two commands: `make demo` and `make test`. Everything else is a helper of those.
SHELL := /bin/bash
# CMake's own make calls below print their progress; their "Entering directory" lines are noise.
MAKEFLAGS += --no-print-directory
BUILD ?= build
JOBS ?= $(shell nproc)
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
CMAKE_FLAGS ?=
PROMPT ?= In two sentences, why does a transformer need a KV cache?

.PHONY: all setup setup-test configure build model demo test format format-check ctest clean image

all: build

# `make demo` installs only what the demo needs; `make test` adds the test-only dependencies
# (clang, clang-format, the Python venv with llama-cpp-python: scripts/setup --help).
setup:
	@scripts/setup

setup-test:
	@scripts/setup --test

# XKV_CPU_ONLY=1 builds without CUDA even where a CUDA toolkit is installed (XKV_CPU_ONLY=0 switches
# it back on); left unset, the build keeps what it was configured with. Reconfiguring is cheap and
# picks up tools installed since (clang for the fuzzer, Google Benchmark).
cpu_only = $(if $(filter 1 ON on yes,$(XKV_CPU_ONLY)),-DXKV_CPU_ONLY=ON,$(if $(filter 0 OFF off no,$(XKV_CPU_ONLY)),-DXKV_CPU_ONLY=OFF))

configure:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(cpu_only) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

model:
	@scripts/fetch-model

# Set up, build the `xkv` binary (no test binaries), fetch the model and answer a chat prompt with
# the real model: `xkv serve` (embedded: coordinator + 2 stages) in the background, one streamed
# chat answer with its XKV stats through `xkv client generate`, then the server is stopped.
DEMO_PORT ?= 50551
demo: setup model configure
	cmake --build $(BUILD) -j $(JOBS) --target xkv
	@echo "[xkv] starting xkv serve on 127.0.0.1:$(DEMO_PORT) (2 stages, the real model)"
	@$(BUILD)/xkv serve --model $(MODEL) --stages 2 --listen 127.0.0.1:$(DEMO_PORT) \
	  --admin-listen 127.0.0.1:$$(( $(DEMO_PORT) + 1 )) --admin-insecure-local & pid=$$!; \
	trap "kill $$pid 2>/dev/null; wait $$pid 2>/dev/null" EXIT; \
	for i in $$(seq 1 120); do \
	  $(BUILD)/xkv client admin config --server 127.0.0.1:$$(( $(DEMO_PORT) + 1 )) >/dev/null 2>&1 \
	    && break; \
	  kill -0 $$pid 2>/dev/null || exit 1; sleep 0.5; \
	done; \
	$(BUILD)/xkv client generate --server 127.0.0.1:$(DEMO_PORT) --chat --prompt "$(PROMPT)" \
	  --max-tokens 96
	@echo "[xkv] demo done. Next: $(BUILD)/xkv generate --chat --prompt \"...\" (README.md), make test"

format:
	git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

format-check:
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror \
	  && echo "format-check: clang-format clean"

# Set up, build, fetch, then every CPU test: unit, model, parity (llama.cpp), fuzz.
test: setup-test model build format-check ctest

ctest:
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE gpu --timeout 1800

# The runtime image as an OCI archive, without a container daemon (scripts/build-image, as root):
# $(BUILD)/image/xkv-<version>-cuda13.oci.tar. docs/operations.md pushes and deploys it.
image: configure
	cmake --build $(BUILD) -j $(JOBS) --target xkv
	scripts/build-image --xkv $(BUILD)/xkv --out $(BUILD)/image

clean:
	rm -rf $(BUILD)
