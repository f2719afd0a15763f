# nvlm build. `make` builds build/libnvlm.a, build/nvlm and the tests;
# `make check` runs the test suite, then again under ASan+UBSan (build-asan/).
# Sources are found by wildcard: a new src/<concern>/*.c or tests/test_*.c needs no edit here.

BUILD    ?= build
CC       ?= cc
SAN      ?=
OPT      ?= -O2
PKGS     := libpng libdeflate libjpeg libwebp libwebpdemux libgif libutf8proc libcjson oniguruma libcrypto libmicrohttpd libcurl libedit
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g $(OPT) -Iinclude -Isrc $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS   := $(PKG_LIBS) -lm -lpthread
# MPI (docs/distributed.md): Open MPI through pkg-config, else whatever `mpicc` wraps (MPICH).
# NVLM_MPI=0 builds without it.
NVLM_MPI ?= 1
ifeq ($(NVLM_MPI),1)
MPI_CFLAGS := $(shell pkg-config --exists ompi-c 2>/dev/null && pkg-config --cflags ompi-c)
MPI_LIBS   := $(shell pkg-config --exists ompi-c 2>/dev/null && pkg-config --libs ompi-c)
ifeq ($(MPI_LIBS),)
MPI_CFLAGS := $(shell command -v mpicc >/dev/null 2>&1 && mpicc -show 2>/dev/null | tr ' ' '\n' | grep '^-I' | tr '\n' ' ')
MPI_LIBS   := $(shell command -v mpicc >/dev/null 2>&1 && mpicc -show 2>/dev/null | tr ' ' '\n' | grep -E '^-(L|l|Wl)' | tr '\n' ' ')
endif
ifneq ($(MPI_LIBS),)
CFLAGS   += -DNVLM_HAVE_MPI $(MPI_CFLAGS)
LDLIBS   += $(MPI_LIBS)
endif
endif
ifeq ($(SAN),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif
# ThreadSanitizer (not part of `make check`): make BUILD=build-tsan SAN=thread OPT=-O1 build-tsan/tests/test_X
ifeq ($(SAN),thread)
CFLAGS   += -fsanitize=thread -fno-omit-frame-pointer -Wno-maybe-uninitialized # gcc false positives at -O1 with TSan
LDFLAGS  += -fsanitize=thread
endif

LIB_SRC   := $(sort $(wildcard src/*/*.c))
TOOL_SRC  := $(sort $(wildcard tools/*.c))
TEST_SRC  := $(sort $(wildcard tests/test_*.c))
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_OBJ  := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
DEPS      := $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_BIN:=.d)

.PHONY: all check test test-asan demo demo-train clean bench fuzz ldlibs
all: $(BUILD)/libnvlm.a $(BUILD)/nvlm $(TEST_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libnvlm.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/nvlm: $(TOOL_OBJ) $(BUILD)/libnvlm.a
	$(CC) $(LDFLAGS) $(TOOL_OBJ) $(BUILD)/libnvlm.a $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libnvlm.a tests/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -MMD -MP $< $(BUILD)/libnvlm.a $(LDFLAGS) $(LDLIBS) -o $@

# The suite: plain build, then the same tests under ASan+UBSan.
check: all
	$(MAKE) --no-print-directory BUILD=build-asan SAN=1 OPT=-O1 all
	tests/openai/install.sh build/npm
	tests/run.sh build build-asan

test: all
	tests/run.sh $(BUILD)

test-asan:
	$(MAKE) --no-print-directory BUILD=build-asan SAN=1 OPT=-O1 all
	tests/run.sh build-asan

# The README's first command: the shipped demo model (demo/model) answers about demo/image.png.
demo: all
	scripts/demo.sh

# every libFuzzer target for NVLM_FUZZ_SECONDS (default 15) on fuzz/corpus (also part of check)
fuzz:
	fuzz/ci.sh build-fuzz

# Trains demo/model again from nothing (drawn data, random model, both stages) and checks that
# the result is bit-identical to the shipped one (docs/demo.md).
demo-train: $(BUILD)/nvlm
	NVLM=$(BUILD)/nvlm scripts/demo-train.sh

# The libraries a program linked against libnvlm.a needs (the bench/ scripts build with them).
ldlibs:
	@echo $(LDLIBS)

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(DEPS)
