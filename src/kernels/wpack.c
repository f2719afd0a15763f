/* Packing weight matrices into NVLM_WL_P8 (kernels/ops.h, wpack.h). */
#include "kernels/wpack.h"
#include "kernels/cpu.h"
#include "kernels/simd512.h"
#include <string.h>

int nvlm_wpack_reads(int level, nvlm_dtype dt) {
#ifdef NVLM_HAVE_AVX512_KERNELS
    return nvlm_cpu_at_least(level, NVLM_CPU_AVX512) && (dt == NVLM_DT_F32 || dt == NVLM_DT_F16 || dt == NVLM_DT_BF16);
#else
    (void)level, (void)dt;
    return 0;
#endif
}

int nvlm_wpack_can(const nvlm_wmat *w, int level) {
    return w->layout == NVLM_WL_ROWS && w->data && !w->dist && nvlm_wpack_reads(level, w->dtype) && w->rows > 0 &&
           w->rows % NVLM_P8_ROWS == 0 && w->cols > 0 && w->cols % NVLM_P8_RUN == 0;
}

typedef struct pack_job {
    uint8_t *dst;
    const uint8_t *src;
    size_t es;
    int cols;
} pack_job;

/* Groups [begin, end) of 8 rows: each run of 16 of each row to its place. */
static void pack_groups(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const pack_job *j = ctx;
    const size_t run = NVLM_P8_RUN * j->es, row = (size_t)j->cols * j->es;
    for (size_t g = begin; g < end; g++) {
        const uint8_t *s = j->src + g * NVLM_P8_ROWS * row;
        uint8_t *d = j->dst + g * NVLM_P8_ROWS * row;
        for (int k = 0; k < j->cols; k += NVLM_P8_RUN)
            for (int r = 0; r < NVLM_P8_ROWS; r++, d += run) memcpy(d, s + (size_t)r * row + (size_t)k * j->es, run);
    }
}

void nvlm_wpack_p8(nvlm_pool *pool, void *dst, const void *src, size_t es, int rows, int cols) {
    pack_job j = {.dst = dst, .src = src, .es = es, .cols = cols};
    nvlm_pool_run(pool, (size_t)rows / NVLM_P8_ROWS, 16, pack_groups, &j);
}
