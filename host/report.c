/* report.c - see opstools.h. (Being written.) */
#include "opstools.h"

#include <stdio.h>

int fh_budget_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "fusion-host: budget: not built yet\n");
    return 1;
}

int fh_compare_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "fusion-host: compare: not built yet\n");
    return 1;
}
