# nvlm build. `make` builds build/libnvlm.a, build/nvlm and the tests;
# `make check` runs the test suite, then again under ASan+UBSan (build-asan/).
# Sources are found by wildcard: a new src/<concern>/*.c or tests/test_*.c needs no edit here.

BUILD    ?= build
CC       ?= cc
SAN      ?=
OPT      ?= -O2
PKGS     := libpng libdeflate libjpeg libwebp libwebpdemux libgif libutf8proc libcjson oniguruma libcrypto libmicrohttpd libedit
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g $(OPT) -Iinclude -Isrc $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS   := $(PKG_LIBS) -lm -lpthread
ifeq ($(SAN),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif

LIB_SRC   := $(sort $(wildcard src/*/*.c))
TOOL_SRC  := $(sort $(wildcard tools/*.c))
TEST_SRC  := $(sort $(wildcard tests/test_*.c))
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_OBJ  := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
DEPS      := $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_BIN:=.d)

.PHONY: all check test test-asan demo demo-train clean bench fuzz
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

# Trains demo/model again from nothing (drawn data, random model, both stages) and checks that
# the result is bit-identical to the shipped one (docs/demo.md).
demo-train: $(BUILD)/nvlm
	NVLM=$(BUILD)/nvlm scripts/demo-train.sh

clean:
	rm -rf build build-asan build-fuzz

-include $(DEPS)
