/* nvlm run - placeholder until its module lands. */
#include "cli.h"
#include <stdio.h>

int cmd_run(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm run: not implemented yet\n");
    return 1;
}
