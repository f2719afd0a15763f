/* n > 1: the answers after the first, each from its own seed stream (the request's seed + k).
 * TODO(engine): today each choice is a separate sequence that prefills the prompt again (a
 * chat request builds a fresh conversation, images encoded again; a raw completion reuses the
 * first one's cached prompt prefix). Once the engine's paged KV store can fork a sequence, the
 * prompt is prefilled once and each choice forks its KV from it. */
#include "core/err.h"
#include "serve/serve_int.h"
#include <stdlib.h>
#include <string.h>

int serve_extra_choices(nvlm_model *m, serve_job *j, nvlm_token_fn on_token, void *user) {
    int n = j->req.n - 1;
    if (n <= 0) return NVLM_OK;
    j->extra = calloc((size_t)n, sizeof *j->extra);
    if (!j->extra) return nvlm_fail(&j->err, NVLM_E_NOMEM, "out of memory");
    for (int k = 1; k <= n; k++) {
        if (atomic_load(&j->cancelled)) return nvlm_fail(&j->err, NVLM_E_CANCELLED, "cancelled");
        nvlm_sampling s = j->req.sampling;
        s.seed = j->req.sampling.seed + (uint64_t)k;
        nvlm_chat *c = NULL;
        int rc = j->req.raw ? NVLM_OK : serve_make_chat(m, &j->req, j->req.max_tiles, &c, &j->err);
        if (!rc) rc = j->req.raw ? nvlm_chat_complete(j->chat, j->req.question, &s, on_token, user, &j->extra[k - 1], &j->err)
                                 : nvlm_chat_ask(c, j->req.question, &s, on_token, user, &j->extra[k - 1], &j->err);
        nvlm_chat_free(c);
        if (rc) return rc;
        j->n_extra = k;
    }
    return NVLM_OK;
}
