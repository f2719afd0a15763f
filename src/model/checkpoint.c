#include "model/checkpoint.h"
#include "core/err.h"
#include "core/file.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

int nvlm_checkpoint_state_id(const char *dir, char **id, nvlm_err *err) {
    *id = NULL;
    char *path = nvlm_path_join(dir, "trainer_state.json");
    if (!path) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int rc = NVLM_OK;
    if (nvlm_file_exists(path)) {
        char *text = NULL;
        size_t len;
        rc = nvlm_read_file(path, 1u << 20, &text, &len, err);
        cJSON *j = rc ? NULL : cJSON_ParseWithLength(text, len);
        const cJSON *c = j ? cJSON_GetObjectItemCaseSensitive(j, "checkpoint") : NULL;
        if (!rc && !j) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: not JSON (a save cut short?)", path);
        if (cJSON_IsString(c) && !(*id = strdup(c->valuestring))) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        cJSON_Delete(j);
        free(text);
    }
    free(path);
    return rc;
}

int nvlm_checkpoint_check(const char *dir, const nvlm_st *st, nvlm_err *err) {
    char *id = NULL;
    int rc = nvlm_checkpoint_state_id(dir, &id, err);
    if (rc || !id) return rc;
    const char *w = nvlm_st_checkpoint(st);
    if (!w || strcmp(w, id))
        rc = nvlm_fail(err, NVLM_E_FORMAT,
                       "%s: the weights and trainer_state.json come from different training saves (weights: %s, trainer "
                       "state: %s): a save was cut short or files were mixed. Use a folder from one complete save",
                       dir, w ? w : "no save id", id);
    free(id);
    return rc;
}
