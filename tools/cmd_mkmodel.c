/* nvlm mkmodel - placeholder until its module lands. */
#include "cli.h"
#include <stdio.h>

int cmd_mkmodel(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm mkmodel: not implemented yet\n");
    return 1;
}
