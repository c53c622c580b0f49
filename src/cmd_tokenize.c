/* placeholder: being written */
#include <stdio.h>
#include "cli.h"
int cmd_tokenize(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "braid tokenize: not built yet\n"); return 1; }
