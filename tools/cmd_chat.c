/* nvlm chat - placeholder until its module lands. */
#include "cli.h"
#include <stdio.h>

int cmd_chat(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm chat: not implemented yet\n");
    return 1;
}
