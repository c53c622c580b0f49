/* placeholder: being written */
#include <stdio.h>
#include "cli.h"
int cmd_bench(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "braid bench: not built yet\n"); return 1; }
