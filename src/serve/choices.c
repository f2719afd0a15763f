/* n > 1: the answers after the first, each from its own seed stream (the request's seed + k),
 * generated one after the other on the first answer's conversation: a chat request asks its
 * question again (nvlm_chat_regenerate), a raw completion completes its prompt again, so the
 * prompt's KV cache and the encoded images are reused and only the last prompt position is
 * computed again. They run on the engine thread after the first answer, each alone (the other
 * slots wait meanwhile).
 * TODO(engine): fork the prompt's pages once per choice (nvlm_kv_seq_fork) and decode the
 * choices together in the step's batch instead of one after the other. */
#include "core/err.h"
#include "serve/serve_int.h"
#include <stdlib.h>
#include <string.h>

int serve_extra_choices(serve_job *j, nvlm_token_fn on_token, void *user) {
    int n = j->req.n - 1;
    if (n <= 0) return NVLM_OK;
    j->extra = calloc((size_t)n, sizeof *j->extra);
    if (!j->extra) return nvlm_fail(&j->err, NVLM_E_NOMEM, "out of memory");
    for (int k = 1; k <= n; k++) {
        if (atomic_load(&j->cancelled)) return nvlm_fail(&j->err, NVLM_E_CANCELLED, "cancelled");
        nvlm_sampling s = j->req.sampling;
        s.seed = j->req.sampling.seed + (uint64_t)k;
        int rc = j->req.raw ? nvlm_chat_complete(j->chat, j->req.question, &s, on_token, user, &j->extra[k - 1], &j->err)
                            : nvlm_chat_regenerate(j->chat, &s, on_token, user, &j->extra[k - 1], &j->err);
        if (rc) return rc;
        j->n_extra = k;
    }
    return NVLM_OK;
}
