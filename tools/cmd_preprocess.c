/* nvlm preprocess - placeholder until its module lands. */
#include "cli.h"
#include <stdio.h>

int cmd_preprocess(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm preprocess: not implemented yet\n");
    return 1;
}
