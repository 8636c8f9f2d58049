/* Load generator for xrayd's throughput suite: UDP segment datagrams at a fixed rate (or as fast
 * as possible) with sendmmsg. Compiled at run time by bench/loadgen.py; bench/loadgen.py also
 * holds the Python fallback, which builds byte-identical datagrams.
 *
 * usage: sender HOST PORT RATE COUNT SEQ0 SEQSTEP SIZES
 *   RATE     datagrams per second for this process, 0 = as fast as possible
 *   COUNT    datagrams to send; sequence numbers SEQ0, SEQ0+SEQSTEP, ...
 *   SIZES    comma-separated datagram sizes in bytes, used in turn (e.g. 1024 or 512,1024,4096)
 * Each document's "name" is "bench-<seq>-<CLOCK_MONOTONIC ns at send>", which the sink reads
 * to count documents exactly and compute latency. Prints "sent <n> <seconds>" at the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXSIZE 65000
#define MAXSIZES 16

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Mirrors loadgen.build_datagram(): an SDK-shaped segment, padded in metadata to `size`. */
static int build(char *out, int size, long long seq, long long sent) {
    char head[512];
    int n = snprintf(head, sizeof head,
        "{\"format\":\"json\",\"version\":1}\n"
        "{\"id\":\"%016llx\",\"name\":\"bench-%lld-%lld\",\"start_time\":%lld.%06lld,"
        "\"end_time\":%lld.%06lld,\"trace_id\":\"1-%08llx-%024llx\",\"in_progress\":false,"
        "\"http\":{\"request\":{\"method\":\"GET\",\"url\":\"http://example/x\"},"
        "\"response\":{\"status\":200}},\"aws\":{\"xray\":{\"sdk\":\"X-Ray for Python\","
        "\"sdk_version\":\"2.15.0\"}},\"metadata\":{\"default\":{\"blob\":\"",
        (unsigned long long)(seq + 1), seq, sent, sent / 1000000000LL,
        (sent / 1000) % 1000000, sent / 1000000000LL, (sent / 1000) % 1000000 + 1,
        (unsigned long long)(1700000000LL + seq / 1000000), (unsigned long long)seq);
    const char *tail = "\"}}}";
    int tl = (int)strlen(tail);
    int pad = size - n - tl;
    if (pad < 0) pad = 0;
    memcpy(out, head, n);
    memset(out + n, 'x', pad);
    memcpy(out + n + pad, tail, tl);
    return n + pad + tl;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT RATE COUNT SEQ0 SEQSTEP SIZES\n", argv[0]);
        return 2;
    }
    double rate = atof(argv[3]);
    long long count = atoll(argv[4]), seq0 = atoll(argv[5]), step = atoll(argv[6]);
    int sizes[MAXSIZES], nsizes = 0;
    for (char *tok = strtok(argv[7], ","); tok && nsizes < MAXSIZES; tok = strtok(NULL, ","))
        sizes[nsizes++] = atoi(tok);
    if (nsizes == 0) return 2;

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    static char bufs[BATCH][MAXSIZE];
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = bufs[i];
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &addr; /* unconnected: no ECONNREFUSED before the bind */
        msgs[i].msg_hdr.msg_namelen = sizeof addr;
    }

    long long start = now_ns(), sent = 0, errors = 0;
    while (sent < count) {
        long long now = now_ns();
        long long due = count;
        if (rate > 0) {
            due = (long long)((double)(now - start) * rate / 1e9) + 1;
            if (due > count) due = count;
            if (due <= sent) {
                /* Wake at most every millisecond and send what is due in one sendmmsg: a
                 * wake-up per datagram would cost the machine more than the datagrams. */
                long long next = start + (long long)((double)sent * 1e9 / rate);
                if (next < now + 1000000LL) next = now + 1000000LL;
                struct timespec ts = {next / 1000000000LL, next % 1000000000LL};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                continue;
            }
        }
        int n = (int)(due - sent < BATCH ? due - sent : BATCH);
        for (int i = 0; i < n; i++) {
            long long k = sent + i;
            iovs[i].iov_len = build(bufs[i], sizes[k % nsizes], seq0 + k * step, now);
        }
        int done = sendmmsg(fd, msgs, n, 0);
        if (done < 0) {
            if (errno == EINTR) continue;
            errors++;
            if (errors > 1000000) { perror("sendmmsg"); return 1; }
            done = 0;
            /* ENOBUFS/EAGAIN: the datagram was not sent, try again */
            continue;
        }
        sent += done;
    }
    double secs = (double)(now_ns() - start) / 1e9;
    printf("sent %lld %.6f\n", sent, secs);
    return 0;
}
