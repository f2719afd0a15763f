/*
 * nvlm.h - public C API of libnvlm: NVIDIA's NVLM 1.0 vision-language models in C.
 *
 * Conventions
 *  - Every function that can fail returns an int status: 0 (NVLM_OK) on success, a negative
 *    nvlm_status on failure, and fills the caller's nvlm_err (may be NULL) with a message that
 *    names what was wrong (file, line, tensor, field...).
 *  - The library never prints to stdout and never exits; progress goes through callbacks.
 *  - Objects returned through an out-pointer are owned by the caller and released with the
 *    matching *_free function; NULL is accepted by every *_free.
 *  - No global mutable state: every object is independent and may be used from one thread
 *    at a time (a loaded model may be shared read-only by several chats, and chats on one
 *    model may run on different threads at once: they take turns in the model's thread pool,
 *    one parallel loop at a time, and each gets the answers it would get alone).
 */
#ifndef NVLM_H
#define NVLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */

typedef enum nvlm_status {
    NVLM_OK = 0,
    NVLM_E_INVALID_ARG = -1,  /* a caller passed something unusable */
    NVLM_E_IO = -2,           /* a file could not be opened/read/written */
    NVLM_E_FORMAT = -3,       /* a file or request is malformed (bad JSON, corrupt image, ...) */
    NVLM_E_UNSUPPORTED = -4,  /* well-formed but not something nvlm handles */
    NVLM_E_NOMEM = -5,        /* an allocation failed */
    NVLM_E_LIMIT = -6,        /* a configured limit was exceeded (image pixels, context, ...) */
    NVLM_E_CANCELLED = -7,    /* a callback asked to stop */
    NVLM_E_INTERNAL = -8,     /* a bug: please report */
    NVLM_E_NUMERIC = -9,      /* the model produced NaN/Inf (damaged or out-of-range weights) */
    NVLM_E_BUSY = -10         /* a shared resource is exhausted for now (the KV cache is full): retry later */
} nvlm_status;

typedef struct nvlm_err {
    int code;        /* nvlm_status of the failure, 0 when none */
    char msg[1024];  /* human-readable, names what is wrong; "" when none */
} nvlm_err;

/* Name of a status code ("invalid argument", "I/O error", ...). Never NULL. */
const char *nvlm_status_name(int code);

/* ------------------------------------------------------------- tokenizer */

typedef struct nvlm_tokenizer nvlm_tokenizer;

/* Loads the tokenizer of a folder: tokenizer.json, or else vocab.json + merges.txt
 * (+ tokenizer_config.json for added tokens). */
int nvlm_tokenizer_load(const char *dir, nvlm_tokenizer **out, nvlm_err *err);
void nvlm_tokenizer_free(nvlm_tokenizer *tok);

/* Encodes UTF-8 text (invalid sequences become U+FFFD). Added tokens in the text are
 * recognised; nothing is prepended or appended. *ids is malloc'ed, caller frees. */
int nvlm_tokenizer_encode(const nvlm_tokenizer *tok, const char *text, size_t len,
                          int32_t **ids, size_t *n_ids, nvlm_err *err);

/* Decodes ids to UTF-8 (lossy: invalid byte runs become U+FFFD as Hugging Face does).
 * skip_special drops added tokens flagged special. *text is malloc'ed, NUL-terminated. */
int nvlm_tokenizer_decode(const nvlm_tokenizer *tok, const int32_t *ids, size_t n_ids,
                          int skip_special, char **text, size_t *len, nvlm_err *err);

/* Id of a token string (added token or vocabulary entry), or -1. */
int32_t nvlm_tokenizer_token_id(const nvlm_tokenizer *tok, const char *token);
/* The bytes a token stands for (a regular token's may be part of a UTF-8 character; an added
 * token's are its text); NULL, *len 0 for an unknown id. */
const uint8_t *nvlm_tokenizer_token_bytes(const nvlm_tokenizer *tok, int32_t id, size_t *len);
/* Number of ids (regular vocabulary + added tokens). */
size_t nvlm_tokenizer_size(const nvlm_tokenizer *tok);
/* 1 if the id is an added token flagged special. */
int nvlm_tokenizer_is_special(const nvlm_tokenizer *tok, int32_t id);

/* Streaming decoder: feed ids one at a time, get back only complete UTF-8 characters. */
typedef struct nvlm_detok nvlm_detok;
int nvlm_detok_new(const nvlm_tokenizer *tok, int skip_special, nvlm_detok **out, nvlm_err *err);
/* Appends the text completed by `id` to *out (malloc'ed, NUL-terminated, may be empty). */
int nvlm_detok_push(nvlm_detok *d, int32_t id, char **out, size_t *len, nvlm_err *err);
/* Flushes what is left (an incomplete sequence becomes U+FFFD). */
int nvlm_detok_flush(nvlm_detok *d, char **out, size_t *len, nvlm_err *err);
void nvlm_detok_free(nvlm_detok *d);

/* ----------------------------------------------------------------- images */

/* A decoded image, 8-bit RGB, row-major HWC (what Pillow's convert('RGB') gives). */
typedef struct nvlm_image {
    int width, height;
    uint8_t *rgb;          /* width*height*3 bytes, malloc'ed */
} nvlm_image;

typedef struct nvlm_image_limits {
    uint64_t max_pixels;   /* 0: default, Pillow's decompression-bomb error bound (2 * 89478485) */
} nvlm_image_limits;

/* Decodes JPEG, PNG, WebP, GIF (first frame) or BMP from memory, detected by content. */
int nvlm_image_decode(const uint8_t *data, size_t len, const nvlm_image_limits *limits,
                      nvlm_image *out, nvlm_err *err);
int nvlm_image_load(const char *path, const nvlm_image_limits *limits, nvlm_image *out,
                    nvlm_err *err);
void nvlm_image_free(nvlm_image *img);

/* Pillow's Image.resize(..., BICUBIC) on RGB8, bit-exact. */
int nvlm_image_resize(const nvlm_image *in, int width, int height, nvlm_image *out,
                      nvlm_err *err);

/* Dynamic high-resolution tiles of one image (NVLM/InternVL dynamic_preprocess). */
typedef struct nvlm_tiles {
    int cols, rows;        /* the grid chosen */
    int num_tiles;         /* cols*rows, plus one when thumbnail */
    int thumbnail;         /* 1 when a thumbnail was appended (last tile) */
    int size;              /* tile side, 448 */
    uint8_t *rgb;          /* num_tiles * size * size * 3 bytes, HWC per tile */
} nvlm_tiles;

int nvlm_image_tile(const nvlm_image *img, int tile_size, int min_num, int max_num,
                    int use_thumbnail, nvlm_tiles *out, nvlm_err *err);
void nvlm_tiles_free(nvlm_tiles *t);

/* ImageNet normalisation of one HWC uint8 tile into float32 CHW [3, size, size]
 * exactly as torchvision's ToTensor + Normalize compute it. */
void nvlm_tile_normalize(const uint8_t *tile_rgb, int size, float *out_chw);

/* Tiles of several images in one go: all tiles, image after image, in one array, each
 * image's exactly as nvlm_image_tile makes them (the bytes never depend on threads). */
typedef struct nvlm_tile_opts {
    int tile_size;         /* 0: 448 */
    int min_num, max_num;  /* 0: 1 and 6 */
    int no_thumbnail;      /* 1: never append the thumbnail */
    int threads;           /* <= 1: the calling thread only */
    nvlm_image_limits limits; /* for nvlm_images_load_tile */
} nvlm_tile_opts;

typedef struct nvlm_tile_batch {
    int n_images;
    int total_tiles;       /* sum of images[i].num_tiles */
    int size;              /* tile side */
    nvlm_tiles *images;    /* per image: grid, num_tiles, thumbnail; .rgb points into rgb */
    int *first_tile;       /* per image: index of its first tile */
    uint8_t *rgb;          /* total_tiles * size * size * 3 bytes, HWC per tile */
} nvlm_tile_batch;

int nvlm_images_tile(const nvlm_image *imgs, int n_images, const nvlm_tile_opts *opts,
                     nvlm_tile_batch *out, nvlm_err *err);
/* Decodes the files and tiles them; with threads > 1 an image is resized while it is still
 * being decoded (JPEG, PNG) and the rest shared in bands. Errors name the file. */
int nvlm_images_load_tile(const char *const *paths, int n_images, const nvlm_tile_opts *opts,
                          nvlm_tile_batch *out, nvlm_err *err);
void nvlm_tile_batch_free(nvlm_tile_batch *b);
/* nvlm_tile_normalize of n consecutive tiles into float32 [n, 3, size, size]. */
void nvlm_tiles_normalize(const uint8_t *tiles_rgb, int n_tiles, int size, float *out);

/* ------------------------------------------------------------------ model */

typedef struct nvlm_model nvlm_model;

/* ------------------------------------------------ several processes (docs/distributed.md) */

/* One MPI job's view of itself: under `mpirun -np N`, a model loaded with it holds only this
 * rank's share of every large matrix (tensor parallel, all-gather: the same results as one
 * process). One forward pass at a time per job; every rank makes the same calls. */
typedef struct nvlm_dist nvlm_dist;
/* 1 when this build has MPI support (NVLM_HAVE_MPI). */
int nvlm_dist_built(void);
/* The job size a launcher announced in the environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE,
 * PMIX_RANK > 0 counts as 2); 1 when the process was not started by mpirun / mpiexec. */
int nvlm_dist_launch_size(void);
/* Joins the job (MPI_Init, then a private communicator whose errors return to nvlm, which
 * ends the whole job with a message naming the rank). Refused in a build without MPI. */
int nvlm_dist_init(int *argc, char ***argv, nvlm_dist **out, nvlm_err *err);
/* Leaves the job normally (MPI_Finalize) and frees d. NULL does nothing. */
void nvlm_dist_finish(nvlm_dist *d);
/* Ends every rank of the job now (MPI_Abort) with this exit status after printing msg with the
 * rank on stderr; what a rank does when it cannot go on while the others wait for it. */
void nvlm_dist_abort(nvlm_dist *d, int status, const char *msg);
int nvlm_dist_rank(const nvlm_dist *d);   /* 0 for NULL */
int nvlm_dist_size(const nvlm_dist *d);   /* 1 for NULL */
/* Traffic of the tensor-parallel exchanges since the job started (or the last reset). */
typedef struct nvlm_dist_stats {
    uint64_t n_exchanges;   /* collective calls */
    uint64_t bytes_sent;    /* this rank's payload bytes */
    uint64_t bytes_received;
    double ms;              /* wall time inside the collectives (includes waiting for slower ranks) */
} nvlm_dist_stats;
/* Rank 0's *len bytes at *data (a line typed, an image file; *len -1: none, e.g. end of input)
 * to every rank: on the others *len is set and *data becomes a malloc'ed copy with a NUL byte
 * after it (NULL for -1). What lets rank 0 alone read the input while the others follow. A rank
 * out of memory ends the job. No-op for NULL or a job of one. */
void nvlm_dist_bcast_bytes(nvlm_dist *d, char **data, int64_t *len);
/* 1 on every rank when flag is set on any rank (e.g. Ctrl-C seen by rank 0). */
int nvlm_dist_any(nvlm_dist *d, int flag);
void nvlm_dist_get_stats(const nvlm_dist *d, nvlm_dist_stats *out);
void nvlm_dist_reset_stats(nvlm_dist *d);

/* Progress of a long operation: done/total in arbitrary units, what in words.
 * Return non-zero to cancel. */
typedef int (*nvlm_progress_fn)(void *user, const char *what, uint64_t done, uint64_t total);

/* How the weights reach memory. READ copies them into the process's own memory at load, with
 * n_threads readers (at most 8), onto huge pages where Linux allows (generation then runs up
 * to ~10% faster than from mapped page-cache pages, measured in docs/performance.md). MMAP
 * maps the files: loads at once, pages in on first use, shares the page cache between
 * processes and can run a model larger than RAM (slowly). AUTO
 * reads when the weights take under 3/4 of the available memory, else maps. READ of more
 * than the available memory fails at once (NVLM_E_NOMEM) rather than end in the OOM killer. */
enum { NVLM_IO_AUTO = 0, NVLM_IO_READ = 1, NVLM_IO_MMAP = 2 };

/* Arithmetic of the matrix products (docs/performance.md "bf16 compute"): float32 (the default,
 * exact to the reference), or BF16 as a GPU runs the released bfloat16 model: in the ViT, the
 * projector and the LLM's MLP in prefill (4+ tokens at a time) the activations and weights are
 * rounded to BF16 and multiplied with vdpbf16ps (AVX512-BF16) or its exact emulation (same bits
 * at every level); the LLM's q/k/v/o and lm_head, generation and attention stay float32, which
 * keeps the reference cases within the Q8_0 quality bar (every LLM matrix in BF16 fell just
 * under it). */
enum { NVLM_COMPUTE_F32 = 0, NVLM_COMPUTE_BF16 = 1 };

typedef struct nvlm_load_options {
    int n_threads;                /* 0: all cores (compute, and reading the weights) */
    nvlm_progress_fn progress;    /* may be NULL */
    void *progress_user;
    int weights_io;               /* NVLM_IO_*; 0 = AUTO */
    int compute;                  /* NVLM_COMPUTE_*; 0 = F32 */
    nvlm_dist *dist;              /* NULL: the whole model; a job of N > 1: this rank's share,
                                     read from the files (weights_io is then ignored) */
} nvlm_load_options;

/* Loads a Hugging Face NVLM folder (config.json, safetensors, tokenizer). */
int nvlm_model_load(const char *dir, const nvlm_load_options *opt, nvlm_model **out,
                    nvlm_err *err);
void nvlm_model_free(nvlm_model *m);
const nvlm_tokenizer *nvlm_model_tokenizer(const nvlm_model *m);
/* "NVLM_D", "NVLM_X" or "NVLM_H". */
const char *nvlm_model_arch(const nvlm_model *m);
/* Size of the logits vector (llm vocab_size). */
int nvlm_model_vocab_size(const nvlm_model *m);
/* The config's max_dynamic_patch (default tile bound). */
int nvlm_model_max_tiles(const nvlm_model *m);

/* Weight formats (docs/quantization.md). */
enum { NVLM_WEIGHTS_STORED = 0, NVLM_WEIGHTS_Q8_0 = 1, NVLM_WEIGHTS_Q4 = 2, NVLM_WEIGHTS_Q4_0 = 3 };
/* Quantizes the weight matrices of a just-loaded model in memory (call right after
 * nvlm_model_load, before any chat; matrices whose rows do not divide into 32-value blocks
 * stay as stored). NVLM_WEIGHTS_STORED does nothing. */
int nvlm_model_quantize(nvlm_model *m, int weights, nvlm_err *err);

/* Element type of the self-attention KV cache of chats created afterwards: float32 (the
 * default) or F16 (half the memory; docs/performance.md gives the measured effect). */
enum { NVLM_KV_F32 = 0, NVLM_KV_F16 = 1 };
int nvlm_model_set_kv_type(nvlm_model *m, int kv_type, nvlm_err *err);

/* ---------------------------------------------------------------- grammar */

/* Structured output (docs/grammar.md): a grammar over the bytes of the answer. Generation with
 * nvlm_sampling.grammar set only picks tokens that keep the answer a prefix of the language,
 * and ends (stop token) only where a whole sentence has been written. Read-only once made: one
 * grammar may serve several conversations at once. */
typedef struct nvlm_grammar nvlm_grammar;

/* From a JSON Schema, the subset: type (object, array, string, number, integer, boolean, null,
 * or a list of them), properties, required, additionalProperties, items, minItems, maxItems,
 * enum, const, anyOf, $ref to #/$defs/NAME, minimum/maximum/exclusive* on integers, minLength,
 * maxLength; annotations (title, description, ...) are ignored. Anything else: NVLM_E_UNSUPPORTED
 * with the keyword and where it is in the message. */
int nvlm_grammar_from_json_schema(const char *schema, size_t len, nvlm_grammar **out, nvlm_err *err);
/* Any JSON object (OpenAI's response_format json_object). */
int nvlm_grammar_json_object(nvlm_grammar **out, nvlm_err *err);
void nvlm_grammar_free(nvlm_grammar *g);

/* ------------------------------------------------------------------- chat */

/* One token's log-probability: log-softmax of the logits the sampler saw (after the repetition,
 * presence and frequency penalties and logit_bias, before temperature and before a grammar's
 * mask, as OpenAI documents its logprobs). */
typedef struct nvlm_token_logprob {
    int32_t id;
    float logprob;
} nvlm_token_logprob;

enum { NVLM_MAX_TOP_LOGPROBS = 20 };

typedef struct nvlm_logprobs {
    nvlm_token_logprob chosen;
    int n_top;                                    /* nvlm_sampling.top_logprobs */
    nvlm_token_logprob top[NVLM_MAX_TOP_LOGPROBS]; /* likeliest first (ties: lower id first) */
} nvlm_logprobs;

typedef struct nvlm_logit_bias {
    int32_t id;
    float bias;               /* added to the token's logit (OpenAI: -100 to 100) */
} nvlm_logit_bias;

typedef struct nvlm_sampling {
    float temperature;        /* 0: greedy (the default, as the published chat() example) */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    uint64_t seed;
    int max_new_tokens;       /* default 1024 */
    const char *const *stop;  /* extra stop strings, NULL-terminated list, may be NULL */
    /* OpenAI's penalties on the tokens generated so far: presence subtracts its value once from
     * the logit of every token that occurred, frequency its value times the count. 0: off. */
    float presence_penalty, frequency_penalty;
    const nvlm_logit_bias *logit_bias; /* n_logit_bias entries, may be NULL */
    size_t n_logit_bias;
    int logprobs;             /* 1: nvlm_answer.logprobs gets one entry per generated token */
    int top_logprobs;         /* 0..NVLM_MAX_TOP_LOGPROBS alternatives per token (with logprobs) */
    const nvlm_grammar *grammar; /* NULL: free text; else the answer follows it (docs/grammar.md) */
    /* with logprobs: called for each generated token as soon as it is chosen (before on_token) */
    void (*on_logprobs)(void *user, const nvlm_logprobs *lp);
    void *logprobs_user;
} nvlm_sampling;

void nvlm_sampling_default(nvlm_sampling *s);

typedef struct nvlm_chat nvlm_chat;

/* A conversation on a loaded model: system message, history, images, KV cache. */
int nvlm_chat_new(nvlm_model *m, nvlm_chat **out, nvlm_err *err);
void nvlm_chat_free(nvlm_chat *c);
/* NULL restores the template default "Answer the questions."; "" is an empty system message. */
int nvlm_chat_set_system(nvlm_chat *c, const char *system_message, nvlm_err *err);
/* Max tiles per image for images added afterwards (0: the config's max_dynamic_patch). */
void nvlm_chat_set_max_tiles(nvlm_chat *c, int max_num);
/* Adds a past turn (question, answer) as chat()'s history does. */
int nvlm_chat_add_history(nvlm_chat *c, const char *question, const char *answer, nvlm_err *err);
/* Marks the conversation as having a history even when it is empty: chat(history=[]) rather
 * than chat(history=None). Only None puts "<image>\n" before a question without placeholder.
 * nvlm_chat_add_history and every answered question also mark it. */
void nvlm_chat_mark_history(nvlm_chat *c);
/* Queues an image for the next <image> placeholder (in history or the next question). */
int nvlm_chat_add_image(nvlm_chat *c, const nvlm_image *img, nvlm_err *err);
int nvlm_chat_add_image_file(nvlm_chat *c, const char *path, nvlm_err *err);

/* Polled between units of work (a tile of the vision encoder, a chunk of the prompt, a
 * generated token): non-zero makes nvlm_chat_ask return NVLM_E_CANCELLED soon. The conversation
 * stays usable (nothing of the cancelled turn joins the history). */
typedef int (*nvlm_abort_fn)(void *user);
void nvlm_chat_set_abort(nvlm_chat *c, nvlm_abort_fn fn, void *user);

/* Called for each generated token: id and the text it completes (maybe ""). Non-zero stops. */
typedef int (*nvlm_token_fn)(void *user, int32_t id, const char *text, size_t len);

typedef struct nvlm_answer {
    char *response;          /* the stripped answer text, malloc'ed */
    int32_t *prompt_ids;     /* the whole prompt of this turn */
    size_t n_prompt;
    size_t n_prompt_reused;  /* leading prompt tokens whose KV cache was kept from the last turn */
    int32_t *output_ids;     /* generated ids, with the stop token when one was generated */
    size_t n_output;
    int *num_patches;        /* tiles per image of the conversation */
    size_t n_images;
    float *last_logits;      /* logits at the last prompt position, vocab_size values */
    nvlm_logprobs *logprobs; /* per generated token when nvlm_sampling.logprobs, else NULL */
    int finish_length;       /* 1 when max_new_tokens ended it, 0 on a stop token/string */
    double vit_ms, prompt_ms, gen_ms;
} nvlm_answer;

/* Asks a question with chat()'s semantics and generates the answer; the turn joins the
 * history. Images queued since the last question fill the conversation's next <image>
 * placeholders; more images than placeholders is an error (extra placeholders stay text).
 * on_token may be NULL. The KV cache of the common prefix with the previous turn is reused. */
int nvlm_chat_ask(nvlm_chat *c, const char *question, const nvlm_sampling *s,
                  nvlm_token_fn on_token, void *user, nvlm_answer *out, nvlm_err *err);
/* A raw completion (OpenAI's /v1/completions): prompt is tokenized as it is, with no chat
 * template and no images; the answer is not stripped and does not join the history. The KV
 * cache of the common prefix with the previous call is reused as in nvlm_chat_ask. */
int nvlm_chat_complete(nvlm_chat *c, const char *prompt, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                       nvlm_answer *out, nvlm_err *err);
/* Answers the last question again (e.g. with another seed): the last turn leaves the history and
 * the same prompt is asked, so its KV cache and encoded images are reused (only the last prompt
 * position is recomputed); the new answer takes the turn's place. */
int nvlm_chat_regenerate(nvlm_chat *c, const nvlm_sampling *s, nvlm_token_fn on_token, void *user, nvlm_answer *out,
                         nvlm_err *err);
void nvlm_answer_free(nvlm_answer *a);

#ifdef __cplusplus
}
#endif
#endif /* NVLM_H */
