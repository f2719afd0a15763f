/* The `nvlm` command line as a user meets it: the binary built beside this test (BUILD/nvlm)
 * run through the shell on the tiny reference model. Exit codes, the messages that name what
 * is wrong, and that the answer does not depend on the thread count or on how the weights
 * reach memory. Under ASan the binary is the ASan build, so its leaks fail here too. */
#include "check.h"
#include <cjson/cJSON.h>
#include <sys/wait.h>

static char nvlm_bin[4096];
static char out[1 << 16];

/* Runs `nvlm ARGS` with stderr folded into stdout; its output lands in out, returns its exit code
 * (-1 when it did not exit normally). */
static int nvlm(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", nvlm_bin, args);
    FILE *p = popen(cmd, "r");
    out[0] = 0;
    if (!p) return -1;
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    while (fgetc(p) != EOF) { /* drain the rest so the child never blocks on a full pipe */
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *s = hay; (s = strstr(s, needle)); s += strlen(needle)) n++;
    return n;
}

static void test_usage(void) {
    CHECK(nvlm("--help") == 0 && strstr(out, "commands:") && strstr(out, "bench"), "--help: %s", out);
    CHECK(nvlm("frobnicate") != 0 && strstr(out, "unknown command 'frobnicate'"), "unknown command: %s", out);
    CHECK(nvlm("bench --prompt x") == 2 && strstr(out, "bad value for --prompt"), "bench bad value: %s", out);
    CHECK(nvlm("bench --frobnicate 3") == 2 && strstr(out, "unknown option '--frobnicate'"), "bench unknown option: %s", out);
    CHECK(nvlm("run --model /nonexistent/nvlm -p hi") != 0 && strstr(out, "/nonexistent/nvlm/config.json"), "run, no model: %s", out);
    CHECK(nvlm("run -p hi --threads 0") == 2 && strstr(out, "bad value for --threads"), "run --threads 0: %s", out);
    CHECK(nvlm("bench --model /nonexistent/nvlm --no-kernels") == 1 && strstr(out, "/nonexistent/nvlm/config.json"), "bench, no model: %s",
          out);
    /* info --cpu: the level and one kernel per op (the dispatch table's names); NVLM_CPU caps it */
    CHECK(nvlm("info --cpu") == 0 && strstr(out, "kernel level: ") && strstr(out, "matmul BF16 prefill") &&
              strstr(out, "attention generation") && strstr(out, "--compute bf16") && strstr(out, "bf16_ukr_") &&
              count(out, "\n") >= 18,
          "info --cpu: %s", out);
    CHECK(nvlm("info --cpu --json") == 2, "info --cpu --json: %s", out);
    setenv("NVLM_CPU", "scalar", 1);
    CHECK(nvlm("info --cpu") == 0 && strstr(out, "kernel level: scalar") && strstr(out, "\nop ") &&
              strstr(out, "matmul_scalar") && strstr(out, "bf16_ukr_scalar") && !strstr(strstr(out, "\nop "), "avx"),
          "NVLM_CPU=scalar info --cpu: %s", out);
    unsetenv("NVLM_CPU");
}

/* Missing input files are named before the model loads (nothing about weights is printed). */
static void test_run_files_first(const char *model) {
    char a[4608];
    snprintf(a, sizeof a, "run -m %s -i /nonexistent/cat.png -p hi", model);
    CHECK(nvlm(a) == 1 && strstr(out, "cannot read image /nonexistent/cat.png") && !strstr(out, "weights"), "missing image: %s", out);
    snprintf(a, sizeof a, "run -m %s -p hi --history /nonexistent/h.json", model);
    CHECK(nvlm(a) == 1 && strstr(out, "cannot read history /nonexistent/h.json") && !strstr(out, "weights"), "missing history: %s", out);
    snprintf(a, sizeof a, "run -m %s -p hi --logits-out /nonexistent/dir/l.bin", model);
    CHECK(nvlm(a) == 1 && strstr(out, "folder /nonexistent/dir") && !strstr(out, "weights"), "unwritable logits: %s", out);
}

/* --json-schema: the answer parses and validates; a schema outside the subset is refused before
 * the model loads, naming the keyword; --json-object; --logprobs N in the --json output. */
static void test_run_json_schema(const char *model) {
    const char *path = "/tmp/nvlm_test_cli_schema.json", *bad = "/tmp/nvlm_test_cli_bad_schema.json";
    FILE *f = fopen(path, "w"), *g = fopen(bad, "w");
    if (!f || !g) {
        CHECK(0, "cannot write %s", path);
        if (f) fclose(f);
        if (g) fclose(g);
        return;
    }
    fputs("{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":9},"
          "\"ok\":{\"type\":\"boolean\"}},\"required\":[\"n\",\"ok\"],\"additionalProperties\":false}", f);
    fputs("{\"type\":\"string\",\"format\":\"email\"}", g);
    fclose(f), fclose(g);
    char a[4608];
    snprintf(a, sizeof a, "run -m %s -p hi -q --json --json-schema %s", model, path);
    int rc = nvlm(a);
    cJSON *j = rc == 0 ? cJSON_Parse(out) : NULL, *resp = cJSON_GetObjectItem(j, "response");
    cJSON *v = cJSON_IsString(resp) ? cJSON_Parse(resp->valuestring) : NULL, *n = cJSON_GetObjectItem(v, "n");
    CHECK(cJSON_IsNumber(n) && n->valuedouble >= 1 && n->valuedouble <= 9 && cJSON_IsBool(cJSON_GetObjectItem(v, "ok")) &&
              cJSON_GetArraySize(v) == 2, "--json-schema answer: %s", out);
    cJSON_Delete(v), cJSON_Delete(j);
    snprintf(a, sizeof a, "run -m %s -p hi --json-schema %s", model, bad);
    CHECK(nvlm(a) == 1 && strstr(out, "'format'") && !strstr(out, "weights"), "bad schema: %s", out);
    snprintf(a, sizeof a, "run -m %s -p hi -q --json --json-object --logprobs 2 -n 4", model);
    rc = nvlm(a);
    j = rc == 0 ? cJSON_Parse(out) : NULL;
    cJSON *lp = cJSON_GetObjectItem(j, "logprobs");
    CHECK(cJSON_GetArraySize(lp) == 4 && cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(lp, 0), "top")) == 2,
          "--logprobs 2: %s", out);
    cJSON_Delete(j);
    CHECK(nvlm("run -p hi --logprobs 21 --json") == 2, "--logprobs 21: %s", out);
    remove(path), remove(bad);
}

static void test_bench(const char *model) {
    char a[4608];
    snprintf(a, sizeof a, "bench --model %s --prompt 4 --gen 4 -t 2 --no-kernels", model);
    CHECK(nvlm(a) == 0, "bench: %s", out);
    /* 1 and 2 threads, each with its roofline read from the weights between the rounds */
    CHECK(count(out, "generation: 4 tokens") == 2 && count(out, "read alone at") == 2 && count(out, "peak RSS") == 2, "bench output: %s",
          out);
    CHECK(count(out, "weights read into memory (--no-mmap)") == 2, "bench reads by default: %s", out);
    snprintf(a, sizeof a, "bench --model %s --prompt 2 --gen 1 -t 1 --no-kernels --mmap", model);
    CHECK(nvlm(a) == 0 && strstr(out, "weights mapped (--mmap)") && strstr(out, "generation: 1 tokens"), "bench --mmap: %s", out);
}

/* The same greedy answer at 1 and 2 threads, read into memory or mapped. */
static void test_run_same_answer(const char *model) {
    static char first[1 << 16];
    const char *modes[] = {"-t 1 --no-mmap", "-t 2 --no-mmap", "-t 2 --mmap"};
    for (int i = 0; i < 3; i++) {
        char a[4608];
        snprintf(a, sizeof a, "run -m %s -p Hello -n 6 --json -q %s", model, modes[i]);
        int rc = nvlm(a);
        CHECK(rc == 0 && strstr(out, "\"output_ids\""), "run %s: %s", modes[i], out);
        if (i == 0) snprintf(first, sizeof first, "%s", out);
        else CHECK(!strcmp(out, first), "run %s differs:\n%s\nvs\n%s", modes[i], out, first);
    }
    /* every x86 SIMD level runs kernels with the same bits: the same answer at avx2 */
    setenv("NVLM_CPU", "avx2", 1);
    {
        char a[4608];
        snprintf(a, sizeof a, "run -m %s -p Hello -n 6 --json -q -t 1", model);
        CHECK(nvlm(a) == 0 && !strcmp(out, first), "run at NVLM_CPU=avx2 differs:\n%s\nvs\n%s", out, first);
    }
    unsetenv("NVLM_CPU");
    char a[4608];
    snprintf(a, sizeof a, "info --model %s", model);
    CHECK(nvlm(a) == 0 && strstr(out, "loading:") && strstr(out, "read into memory by default"), "info: %s", out);
}

/* --compute bf16 (issue 19): the same greedy answer on the tiny reference model with an image
 * (its ViT, projector and prefill then run in BF16), and bad values named. */
static void test_compute(const char *model) {
    static char f32[1 << 16];
    char a[4608];
    const char *img = shared_path("reference/images/astronaut_q90.jpg");
    snprintf(a, sizeof a, "run -m %s -i %s -p 'Describe the image.' -n 8 --json -q -t 2 --compute f32", model, img);
    CHECK(nvlm(a) == 0 && strstr(out, "\"output_ids\""), "run --compute f32: %s", out);
    snprintf(f32, sizeof f32, "%s", out);
    snprintf(a, sizeof a, "run -m %s -i %s -p 'Describe the image.' -n 8 --json -q -t 2 --compute bf16", model, img);
    CHECK(nvlm(a) == 0 && !strcmp(out, f32), "run --compute bf16 differs:\n%s\nvs\n%s", out, f32);
    CHECK(nvlm("run -p hi --compute fp8") == 2 && strstr(out, "bad value for --compute: 'fp8'"), "run --compute fp8: %s", out);
    CHECK(nvlm("bench --compute fp8") == 2 && strstr(out, "--compute must be f32 or bf16"), "bench --compute fp8: %s", out);
    CHECK(nvlm("train --compute fp8") == 2 && strstr(out, "--compute is f32 or bf16"), "train --compute fp8: %s", out);
}

/* The smaller commands: tokenize, preprocess, quantize (to a scratch folder: it says which
 * matrices stay as stored, refuses its own model folder, and its output answers). */
static void test_tools(const char *model) {
    char a[4608];
    snprintf(a, sizeof a, "tokenize --model %s --text 'Hello world<|im_start|>'", model);
    CHECK(nvlm(a) == 0 && strstr(out, "{\"ids\": [") && strstr(out, ", 4257]}"), "tokenize: %s", out);
    snprintf(a, sizeof a, "preprocess --image %s --json", shared_path("reference/images/astronaut_q90.jpg"));
    CHECK(nvlm(a) == 0 && strstr(out, "\"grid\"") && strstr(out, "\"tile_sha256\""), "preprocess: %s", out);
    snprintf(a, sizeof a, "preprocess --image %s", shared_path("reference/images/bad/truncated.png"));
    CHECK(nvlm(a) == 1 && strstr(out, "truncated.png: PNG: image file is truncated"), "preprocess, bad image: %s", out);
    char dir[] = "/tmp/nvlm_test_cli_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    snprintf(a, sizeof a, "quantize --model %s --out %s/q --type q4", model, dir);
    CHECK(nvlm(a) == 0 && strstr(out, "kept as stored") && strstr(out, "vision_model.encoder.layers.0.attn.qkv.weight [384 x 80]"),
          "quantize: %s", out);
    snprintf(a, sizeof a, "quantize --model %s/q --out %s/q/ --type q8_0", dir, dir);
    CHECK(nvlm(a) == 1 && strstr(out, "is the model folder"), "quantize into itself: %s", out);
    snprintf(a, sizeof a, "run -m %s/q -p Hello -n 3 --json -q", dir);
    CHECK(nvlm(a) == 0 && strstr(out, "\"output_ids\""), "run the quantized folder: %s", out);
    char q[64];
    snprintf(q, sizeof q, "%s/q", dir);
    check_rm_flat_dir(q);
    rmdir(dir);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *slash = strrchr(argv[0], '/');
    snprintf(nvlm_bin, sizeof nvlm_bin, "%.*s/../nvlm", slash ? (int)(slash - argv[0]) : 1, slash ? argv[0] : ".");
    if (access(nvlm_bin, X_OK)) {
        CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", nvlm_bin);
        return check_done("test_cli");
    }
    char model[4096];
    snprintf(model, sizeof model, "%s", shared_path("reference/models/tiny-nvlm-d"));
    test_usage();
    test_bench(model);
    test_run_files_first(model);
    test_run_same_answer(model);
    test_run_json_schema(model);
    test_tools(model);
    test_compute(model);
    return check_done("test_cli");
}
