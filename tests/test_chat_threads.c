/* Two chats on one model from two threads at once (nvlm.h: a loaded model may be shared by
 * several chats): each thread's answers (text, ids, last-prompt logits bit for bit) equal the
 * same chat run alone, on NVLM-D (image + text) and NVLM-X (cross-attention), with a 2-thread
 * pool the two callers share. Also run under ThreadSanitizer:
 *   make BUILD=build-tsan SAN=thread OPT=-O1 build-tsan/tests/test_chat_threads
 *   build-tsan/tests/test_chat_threads
 * (checks are counted on the main thread only: check.h's counters are not atomic). */
#include "check.h"
#include "nvlm.h"
#include <pthread.h>

enum { TURNS = 2, ROUNDS = 2 };

/* One conversation: an optional image, then TURNS questions. */
typedef struct convo {
    nvlm_model *m;
    const char *image; /* NULL: text only */
    const char *questions[TURNS];
    nvlm_answer ans[TURNS];
    int rc;
    nvlm_err err;
} convo;

static void convo_free(convo *c) {
    for (int i = 0; i < TURNS; i++) nvlm_answer_free(&c->ans[i]);
    memset(c->ans, 0, sizeof c->ans);
}

static void *convo_run(void *arg) {
    convo *cv = arg;
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 8;
    nvlm_chat *c = NULL;
    cv->rc = nvlm_chat_new(cv->m, &c, &cv->err);
    if (!cv->rc && cv->image) cv->rc = nvlm_chat_add_image_file(c, cv->image, &cv->err);
    for (int i = 0; i < TURNS && !cv->rc; i++)
        cv->rc = nvlm_chat_ask(c, cv->questions[i], &s, NULL, NULL, &cv->ans[i], &cv->err);
    nvlm_chat_free(c);
    return NULL;
}

static int same_answer(const nvlm_answer *a, const nvlm_answer *b, int vocab) {
    return a->response && b->response && !strcmp(a->response, b->response) && a->n_output == b->n_output &&
           !memcmp(a->output_ids, b->output_ids, sizeof(int32_t) * a->n_output) && a->n_prompt == b->n_prompt &&
           !memcmp(a->last_logits, b->last_logits, sizeof(float) * (size_t)vocab);
}

static void check_model(const char *rel) {
    nvlm_err err = {0};
    nvlm_model *m = NULL;
    nvlm_load_options lo = {.n_threads = 2};
    CHECK(nvlm_model_load(shared_path(rel), &lo, &m, &err) == 0, "load %s: %s", rel, err.msg);
    if (!m) return;
    char image[4096];
    snprintf(image, sizeof image, "%s", shared_path("reference/images/skimage_astronaut.png"));
    convo solo[2] = {{.m = m, .image = image, .questions = {"Describe the image.", "What colour is it?"}},
                     {.m = m, .image = NULL, .questions = {"Write a short poem.", "Another one."}}};
    for (int k = 0; k < 2; k++) {
        convo_run(&solo[k]);
        CHECK(solo[k].rc == 0, "%s: solo chat %d: %s", rel, k, solo[k].err.msg);
    }
    for (int round = 0; round < ROUNDS; round++) {
        convo both[2] = {solo[0], solo[1]};
        pthread_t th[2];
        int started[2];
        for (int k = 0; k < 2; k++) {
            memset(both[k].ans, 0, sizeof both[k].ans), both[k].rc = 0, both[k].err = (nvlm_err){0};
            started[k] = pthread_create(&th[k], NULL, convo_run, &both[k]) == 0;
            CHECK(started[k], "%s: pthread_create", rel);
        }
        for (int k = 0; k < 2; k++)
            if (started[k]) pthread_join(th[k], NULL);
        for (int k = 0; k < 2; k++) {
            CHECK(started[k] && both[k].rc == 0, "%s round %d: chat %d: %s", rel, round, k, both[k].err.msg);
            for (int i = 0; i < TURNS && started[k] && !both[k].rc && !solo[k].rc; i++)
                CHECK(same_answer(&both[k].ans[i], &solo[k].ans[i], nvlm_model_vocab_size(m)),
                      "%s round %d: chat %d turn %d: \"%s\" beside another chat, \"%s\" alone", rel, round, k, i,
                      both[k].ans[i].response ? both[k].ans[i].response : "", solo[k].ans[i].response);
            convo_free(&both[k]);
        }
    }
    convo_free(&solo[0]);
    convo_free(&solo[1]);
    nvlm_model_free(m);
}

int main(void) {
    check_model("reference/models/tiny-nvlm-d");
    check_model("reference/models/tiny-nvlm-x");
    return check_done("test_chat_threads");
}
