/* nvlm info - placeholder until its module lands. */
#include "cli.h"
#include <stdio.h>

int cmd_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm info: not implemented yet\n");
    return 1;
}
