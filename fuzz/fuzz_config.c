/* libFuzzer target: config.json parsing and validation (nvlm_config_parse) and the
 * parameter count of whatever it accepts. */
#include "model/config.h"
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    nvlm_config cfg;
    nvlm_err err;
    if (nvlm_config_parse((const char *)data, len, "fuzz", &cfg, &err) == 0) {
        nvlm_param_count pc;
        nvlm_config_count_params(&cfg, &pc);
        if (pc.total != pc.vision + pc.projector + pc.llm + pc.xattn) __builtin_trap();
        nvlm_config_free(&cfg);
    }
    return 0;
}
