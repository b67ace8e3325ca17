/* bench.c - see opstools.h. (Being written.) */
#include "opstools.h"

#include <stdio.h>

int fh_bench_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "fusion-host: bench: not built yet\n");
    return 1;
}
