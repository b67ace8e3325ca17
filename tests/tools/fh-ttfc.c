/*
 * fh-ttfc - time to the first streamed chunk: sends one POST and prints the
 * microseconds until the response head and until the first "data:" bytes
 * of an SSE answer arrive. The stream benchmark compares it through
 * fusion-host and directly against the upstream.
 *   fh-ttfc HOST PORT PATH BODY_FILE   -> "head_us=N first_chunk_us=N"
 * Loopback use only; one request, bounded by a 10 s receive timeout.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: fh-ttfc HOST PORT PATH BODY_FILE\n");
        return 2;
    }
    FILE *f = fopen(argv[4], "rb");
    static char body[65536], req[70000], buf[65536];
    size_t blen = f ? fread(body, 1, sizeof(body), f) : 0;
    if (f)
        fclose(f);
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     argv[3], argv[1], blen);
    memcpy(req + n, body, blen);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("fh-ttfc: connect");
        return 1;
    }
    double t0 = now_us(), head = -1, chunk = -1;
    if (send(fd, req, (size_t)n + blen, 0) < 0)
        return 1;
    size_t got = 0;
    while (chunk < 0 && got < sizeof(buf) - 1) {
        ssize_t r = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        buf[got] = '\0';
        if (head < 0 && strstr(buf, "\r\n\r\n"))
            head = now_us() - t0;
        if (head >= 0 && strstr(buf, "data:"))
            chunk = now_us() - t0;
    }
    close(fd);
    printf("head_us=%.0f first_chunk_us=%.0f\n", head, chunk);
    return chunk >= 0 ? 0 : 1;
}
