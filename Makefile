# The README's two commands: `make demo` and `make test`. Everything else is a helper of those.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc)
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
CMAKE_FLAGS ?=
PROMPT ?= In two sentences, why does a transformer need a KV cache?

.PHONY: all setup configure build model demo test format format-check ctest clean image

all: build

setup:
	@scripts/setup

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

model:
	@scripts/fetch-model

# Set up, build, fetch the model and answer a chat prompt with the real model.
# `xkv serve` (embedded: coordinator + 2 stages) in the background, one streamed chat answer with
# its XKV stats through `xkv client generate`, then the server is stopped.
DEMO_PORT ?= 50551
demo: setup build model
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

format:
	git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

format-check:
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror \
	  && echo "format-check: clang-format clean"

# Set up, build, fetch, then every CPU test: unit, model, parity (llama.cpp), fuzz.
test: setup build model format-check ctest

ctest:
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE gpu --timeout 1800

# The runtime image as an OCI archive, without a container daemon (scripts/build-image, as root):
# $(BUILD)/image/xkv-<version>-cuda13.oci.tar. docs/operations.md pushes and deploys it.
image: configure
	cmake --build $(BUILD) -j $(JOBS) --target xkv
	scripts/build-image --xkv $(BUILD)/xkv --out $(BUILD)/image

clean:
	rm -rf $(BUILD)
