/*
 * fh-load - a small load generator for tests and benchmarks: keeps
 * CONCURRENCY POST requests in flight on one thread (libcurl multi) until
 * REQUESTS are done or SECONDS have passed, then prints one line:
 *   requests=N ok=N failed=N rps=R p50_ms=X p99_ms=Y max_ms=Z status_2xx=N ...
 * Exit 0 when every request got a 2xx answer, 1 otherwise.
 *   fh-load URL BODY_FILE CONCURRENCY REQUESTS [SECONDS] [HEADER]...
 * Environment: FH_LOAD_RATE=R starts at most R requests a second (open
 * loop, for "at 5,000 requests/s" figures); FH_LOAD_STAT=Header-Name also
 * reports p50/p99/max of that numeric response header (stat_p50=...).
 * Only for loopback targets; its loops are bounded by count and time.
 */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

typedef struct slot {
    CURL *easy;
    double start;
    double stat; /* FH_LOAD_STAT's value in this answer, or -1 */
} slot;

static const char *stat_header;
static size_t stat_len;

static size_t on_header(char *d, size_t s, size_t n, void *u)
{
    slot *sl = u;
    size_t len = s * n;
    if (stat_header && len > stat_len + 1 && strncasecmp(d, stat_header, stat_len) == 0 &&
        d[stat_len] == ':')
        sl->stat = atof(d + stat_len + 1);
    return len;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t discard(char *d, size_t s, size_t n, void *u)
{
    (void)d, (void)u;
    return s * n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr,
                "usage: fh-load URL BODY_FILE CONCURRENCY REQUESTS [SECONDS] [HEADER]...\n");
        return 2;
    }
    const char *url = argv[1];
    long conc = atol(argv[3]), total = atol(argv[4]);
    double limit = argc > 5 ? atof(argv[5]) : 60.0;
    FILE *f = fopen(argv[2], "rb");
    if (!f || conc <= 0 || total <= 0) {
        fprintf(stderr, "fh-load: bad arguments or unreadable %s\n", argv[2]);
        return 2;
    }
    static char body[1 << 20];
    size_t body_len = fread(body, 1, sizeof(body) - 1, f);
    fclose(f);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:");
    for (int i = 6; i < argc; i++)
        hdr = curl_slist_append(hdr, argv[i]);
    CURLM *multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, conc);
    slot *slots = calloc((size_t)conc, sizeof(*slots));
    double *lat = calloc((size_t)total, sizeof(*lat));
    double *stats = calloc((size_t)total, sizeof(*stats));
    size_t nstats = 0;
    const char *rate_env = getenv("FH_LOAD_RATE");
    double rate = rate_env ? atof(rate_env) : 0;
    stat_header = getenv("FH_LOAD_STAT");
    stat_len = stat_header ? strlen(stat_header) : 0;
    long started = 0, done = 0, ok = 0, status_counts[6] = {0}, transport_errors = 0;
    /* Idle slots, a stack; every slot's handle is set up once. */
    long *idle = calloc((size_t)conc, sizeof(*idle)), nidle = 0;
    for (long i = conc - 1; i >= 0; i--) {
        slots[i].easy = curl_easy_init();
        CURL *e = slots[i].easy;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(e, CURLOPT_PRIVATE, &slots[i]);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, &slots[i]);
        curl_easy_setopt(e, CURLOPT_TIMEOUT, (long)limit + 5);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        idle[nidle++] = i;
    }
    double t0 = now_s();
    for (;;) {
        double now = now_s();
        bool open = started < total && now - t0 < limit;
        /* Start what the rate allows (all free slots without a rate). */
        while (open && nidle > 0 && (rate <= 0 || started < (now - t0) * rate + 1)) {
            slot *s = &slots[idle[--nidle]];
            s->start = now_s();
            s->stat = -1;
            started++;
            curl_multi_add_handle(multi, s->easy);
            open = started < total;
        }
        if (!open && done == started)
            break;
        if (now - t0 > limit + 10)
            break;
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            slot *s = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            long code = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            if (m->data.result != CURLE_OK)
                transport_errors++;
            else
                status_counts[code / 100 < 6 ? code / 100 : 0]++;
            if (m->data.result == CURLE_OK && code / 100 == 2)
                ok++;
            if (done < total)
                lat[done] = (now_s() - s->start) * 1000.0;
            if (s->stat >= 0 && nstats < (size_t)total)
                stats[nstats++] = s->stat;
            done++;
            curl_multi_remove_handle(multi, m->easy_handle);
            idle[nidle++] = s - slots;
        }
        /* Until the next start is due (open loop), or news. */
        int wait_ms = 100;
        if (rate > 0 && started < total && nidle > 0) {
            double next = t0 + (double)started / rate - now_s();
            wait_ms = next <= 0 ? 0 : (int)(next * 1000) + 0;
        }
        if (wait_ms > 0)
            curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
    }
    free(idle);
    double elapsed = now_s() - t0;
    if (nstats) {
        qsort(stats, nstats, sizeof(*stats), cmp_double);
        printf("stat_n=%zu stat_p50=%.4f stat_p99=%.4f stat_max=%.4f ", nstats, stats[nstats / 2],
               stats[(nstats * 99) / 100], stats[nstats - 1]);
    }
    qsort(lat, (size_t)done, sizeof(*lat), cmp_double);
    double p50 = done ? lat[done / 2] : 0;
    double p99 = done ? lat[(done * 99) / 100] : 0;
    printf("requests=%ld ok=%ld failed=%ld transport_errors=%ld rps=%.1f p50_ms=%.3f "
           "p99_ms=%.3f max_ms=%.3f status_2xx=%ld status_4xx=%ld status_5xx=%ld "
           "elapsed_s=%.3f\n",
           done, ok, done - ok, transport_errors, done / elapsed, p50, p99,
           done ? lat[done - 1] : 0, status_counts[2], status_counts[4], status_counts[5], elapsed);
    for (long i = 0; i < conc; i++) {
        if (slots[i].easy) {
            curl_multi_remove_handle(multi, slots[i].easy); /* unfinished ones */
            curl_easy_cleanup(slots[i].easy);
        }
    }
    curl_multi_cleanup(multi);
    curl_slist_free_all(hdr);
    free(slots);
    free(lat);
    free(stats);
    curl_global_cleanup();
    return ok == done && done == total ? 0 : 1;
}
