/* The throughput suite's X-Ray API sink, in C so that it is never the bottleneck: the same
 * protocol and control paths as bench/sink.py (its fallback; see there), one epoll loop.
 * Answers PutTraceSegments (and PutTelemetryRecords) with 200 and no unprocessed segments;
 * accepts SigV4-signed requests but does NOT verify the signatures. Counts the documents by
 * their "bench-<seq>-<sent ns>" names: unique, duplicates, latency (CLOCK_MONOTONIC).
 *
 * usage: sink PORT     (prints "listening <port>" once ready)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct { char *buf; size_t len, cap; } conn_t;

static unsigned char *seen;
static long long expect, documents, unique_docs, duplicates, out_of_range, requests;
static long long body_bytes, first_ns, last_ns, started_ns, telemetry_calls;
static int keep_latency;
static long long *lat;
static size_t nlat, caplat;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void reset(long long n, int latency) {
    free(seen);
    seen = calloc(n > 0 ? (size_t)n : 1, 1);
    expect = n;
    documents = unique_docs = duplicates = out_of_range = requests = 0;
    body_bytes = first_ns = last_ns = 0;
    started_ns = now_ns();
    keep_latency = latency;
    nlat = 0;
}

static void record(const char *body, size_t len, long long arrived) {
    requests++;
    body_bytes += (long long)len;
    const char *p = body, *end = body + len;
    while ((p = memmem(p, (size_t)(end - p), "bench-", 6)) != NULL) {
        p += 6;
        long long seq = 0, sent = 0;
        if (p >= end || !isdigit((unsigned char)*p)) continue;
        while (p < end && isdigit((unsigned char)*p)) seq = seq * 10 + (*p++ - '0');
        if (p >= end || *p != '-') continue;
        p++;
        while (p < end && isdigit((unsigned char)*p)) sent = sent * 10 + (*p++ - '0');
        if (!first_ns) first_ns = arrived;
        last_ns = arrived;
        documents++;
        if (seq >= expect) out_of_range++;
        else if (seen[seq]) duplicates++;
        else { seen[seq] = 1; unique_docs++; }
        if (keep_latency) {
            if (nlat == caplat) {
                caplat = caplat ? caplat * 2 : 65536;
                lat = realloc(lat, caplat * sizeof *lat);
            }
            lat[nlat++] = arrived - sent;
        }
    }
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static int stats_json(char *out, size_t cap) {
    int n = snprintf(out, cap,
        "{\"expect\":%lld,\"documents\":%lld,\"unique\":%lld,\"duplicates\":%lld,"
        "\"out_of_range\":%lld,\"requests\":%lld,\"body_bytes\":%lld,\"first_ns\":%lld,"
        "\"last_ns\":%lld,\"started_ns\":%lld,\"telemetry_calls\":%lld",
        expect, documents, unique_docs, duplicates, out_of_range, requests, body_bytes, first_ns,
        last_ns, started_ns, telemetry_calls);
    if (nlat) {
        long long *copy = malloc(nlat * sizeof *copy);
        memcpy(copy, lat, nlat * sizeof *copy);
        qsort(copy, nlat, sizeof *copy, cmp);
        size_t p99 = (size_t)((double)nlat * 0.99);
        if (p99 >= nlat) p99 = nlat - 1;
        n += snprintf(out + n, cap - (size_t)n,
            ",\"latency_ms\":{\"n\":%zu,\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f}", nlat,
            copy[nlat / 2] / 1e6, copy[p99] / 1e6, copy[nlat - 1] / 1e6);
        free(copy);
    }
    n += snprintf(out + n, cap - (size_t)n, "}");
    return n;
}

static long long query_int(const char *target, const char *key, long long fallback) {
    const char *q = strchr(target, '?');
    size_t klen = strlen(key);
    while (q) {
        q++;
        if (strncmp(q, key, klen) == 0 && q[klen] == '=') return atoll(q + klen + 1);
        q = strchr(q, '&');
    }
    return fallback;
}

static void send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct timespec t = {0, 100000}; nanosleep(&t, NULL); continue; }
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

/* Answers every complete request at the head of the buffer; returns -1 on a bad request. */
static int handle(int fd, conn_t *c) {
    static char payload[1024], response[2048];
    for (;;) {
        char *head_end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!head_end) return 0;
        size_t head_len = (size_t)(head_end - c->buf) + 4;
        long long length = 0;
        for (char *line = c->buf; line < head_end;) {
            char *eol = memmem(line, (size_t)(head_end - line) + 2, "\r\n", 2);
            if (!eol) break;
            if ((size_t)(eol - line) > 15 && strncasecmp(line, "content-length:", 15) == 0)
                length = atoll(line + 15);
            line = eol + 2;
        }
        if (length < 0) return -1;
        if (c->len < head_len + (size_t)length) return 0;
        char target[512] = {0};
        char *sp = memchr(c->buf, ' ', head_len);
        if (!sp) return -1;
        char *sp2 = memchr(sp + 1, ' ', (size_t)(head_end - sp - 1));
        if (!sp2) return -1;
        size_t tlen = (size_t)(sp2 - sp - 1);
        if (tlen >= sizeof target) tlen = sizeof target - 1;
        memcpy(target, sp + 1, tlen);
        const char *body = c->buf + head_len;
        int status = 200, plen;
        if (strncmp(target, "/TraceSegments", 14) == 0) {
            record(body, (size_t)length, now_ns());
            plen = snprintf(payload, sizeof payload, "{\"UnprocessedTraceSegments\":[]}");
        } else if (strncmp(target, "/TelemetryRecords", 17) == 0) {
            telemetry_calls++;
            plen = snprintf(payload, sizeof payload, "{}");
        } else if (strncmp(target, "/bench/reset", 12) == 0) {
            reset(query_int(target, "expect", 0), (int)query_int(target, "latency", 0));
            plen = snprintf(payload, sizeof payload, "{}");
        } else if (strncmp(target, "/bench/stats", 12) == 0) {
            plen = stats_json(payload, sizeof payload);
        } else {
            status = 404;
            plen = snprintf(payload, sizeof payload, "{\"message\":\"not found\"}");
        }
        int rlen = snprintf(response, sizeof response,
            "HTTP/1.1 %d %s\r\nContent-Type: application/x-amz-json-1.1\r\n"
            "x-amzn-RequestId: bench\r\nContent-Length: %d\r\n\r\n%s",
            status, status == 200 ? "OK" : "Not Found", plen, payload);
        send_all(fd, response, (size_t)rlen);
        size_t used = head_len + (size_t)length;
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    reset(0, 0);
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(server, 128) < 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(server, (struct sockaddr *)&addr, &alen);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, server, &ev);
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                int fd = accept4(server, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0) continue;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conn_t *c = calloc(1, sizeof *c);
                c->cap = 1 << 17;
                c->buf = malloc(c->cap);
                /* the fd is stored in front of the buffer struct via a small wrapper */
                struct epoll_event cev = {.events = EPOLLIN};
                long long *slot = malloc(sizeof(long long) + sizeof(conn_t *));
                slot[0] = fd;
                memcpy(slot + 1, &c, sizeof c);
                cev.data.ptr = slot;
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                continue;
            }
            long long *slot = events[i].data.ptr;
            int fd = (int)slot[0];
            conn_t *c;
            memcpy(&c, slot + 1, sizeof c);
            int closed = 0;
            for (;;) {
                if (c->cap - c->len < 65536) {
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t got = recv(fd, c->buf + c->len, c->cap - c->len, 0);
                if (got > 0) { c->len += (size_t)got; continue; }
                if (got == 0) closed = 1;
                else if (errno != EAGAIN && errno != EINTR) closed = 1;
                break;
            }
            if (!closed && handle(fd, c) < 0) closed = 1;
            if (closed) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                free(c->buf);
                free(c);
                free(slot);
            }
        }
    }
}
