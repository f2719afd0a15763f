/* nvlm tokenize - placeholder until its module lands. */
#include "cli.h"
#include <stdio.h>

int cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm tokenize: not implemented yet\n");
    return 1;
}
