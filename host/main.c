/* main.c - process entry: hands argv to the command dispatcher in cli.c. */
#include "cli.h"

int main(int argc, char **argv)
{
    return fh_cli_main(argc, argv);
}
