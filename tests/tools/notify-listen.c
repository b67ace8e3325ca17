/*
 * notify-listen - a stand-in for systemd's notify socket in tests. Binds a
 * unix datagram socket at PATH and appends every message it receives to
 * OUT as "<monotonic ms> <message with newlines as ';'>" lines, flushed at
 * once so a test can wait on them. Exits on SIGTERM.
 *   notify-listen PATH OUT
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: notify-listen SOCKET_PATH OUT_FILE\n");
        return 2;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (fd < 0 || strlen(argv[1]) >= sizeof(sa.sun_path)) {
        perror("socket");
        return 1;
    }
    strcpy(sa.sun_path, argv[1]);
    unlink(argv[1]);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("bind");
        return 1;
    }
    FILE *out = fopen(argv[2], "a");
    if (!out) {
        perror(argv[2]);
        return 1;
    }
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
        if (n < 0)
            continue;
        buf[n] = '\0';
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] == '\n')
                buf[i] = ';';
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        fprintf(out, "%lld %s\n", (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, buf);
        fflush(out);
    }
}
