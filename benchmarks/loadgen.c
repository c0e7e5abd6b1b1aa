/*
 * loadgen: the load generator of benchmarks/load.py, in C so that its own cost per write is
 * little more than the kernel's: it shares the machine with the server it measures.
 *
 * Usage: loadgen PLAN. One process, one epoll set, non-blocking sockets, one timer (the
 * timeout of epoll_wait). It speaks the replay server's protocol to 127.0.0.1:port:
 *
 *  - a writer connects, sends "P/<game>/w<n>\0" and the SCFA header at once; from the start
 *    on it sends the body at `rate` bytes/s, in one write per `tick` seconds (FA writes a few
 *    bytes every 0.1 s tick). Writers are spread over `slots` send slots per tick, so they are
 *    not in step; every writer of one game sends the same bytes. A slot that comes more than
 *    a tick late (the machine is saturated) is skipped, counted: its writers send all that is
 *    due at their next slot, so the bytes keep their schedule and only writes get fewer.
 *    `seconds` after the start every writer sends what is still due and closes cleanly
 *    (FIN). With `seconds 0` writers send their header only and close at the start
 *    (header-only writers).
 *  - a reader connects `reader_after` seconds after the start, sends "G/<game>/r<n>\0" and
 *    reads until the server closes. It checks every byte against header + body, and gives
 *    one lag sample per chunk received while the writers stream: arrival time - (the time
 *    the chunk's last byte was due at the writers + `delay`), counted when that time is after
 *    the reader connected (a game's tail may come early once the game has ended).
 *    A reader is complete if it got EOF after exactly header + the body its game's writers
 *    sent, every byte equal.
 *  - an idle connection connects, sends nothing and closes when the writers close.
 *
 * Phases: connect every writer and idle connection (at most `connect_burst` connects in
 * flight), print {"event":"connected",...}, wait for a line "start T" on stdin (T: the
 * start, in CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic()), stream, then
 * wait for the server to close writers and readers (at most `end_after` seconds after the
 * writers' FIN) and print one JSON line of results.
 *
 * PLAN is a text file, one "key value..." per line:
 *   port P / header FILE / body FILE / rate B / tick S / slots N / seconds S /
 *   reader_after S / delay S / end_after S / idle N / connect_burst N /
 *   ports FIRST LAST   (source ports to bind on 127.0.0.1; default: the kernel picks) /
 *   game ID WRITERS READERS   (one line per game)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum kind { WRITER, READER, IDLE };
enum state {
    QUEUED,     /* not connected yet */
    CONNECTING, /* connect() in flight */
    OPEN,       /* connected */
    FIN_SENT,   /* a writer that sent everything and shut down its side */
    CLOSED,     /* closed: by us, or cleanly by the server */
    FAILED,     /* the connect failed */
    DROPPED,    /* the server closed or reset it before we were done */
};

struct conn {
    int fd;
    uint8_t kind, state, polled_out, mismatch, got_eof, prefix_size;
    uint32_t game;     /* index into games[] */
    uint32_t number;   /* writer / reader number within its game (its name) */
    uint64_t sent;     /* bytes sent: the prefix, then header + body (writers) */
    uint64_t target;   /* bytes due now (writers) */
    uint64_t received; /* bytes received (readers) */
    double since;      /* when the connect started; then, when it completed */
};

struct game {
    uint32_t id, writers, readers;
};

/* --- the plan ------------------------------------------------------------------------- */

static int port = 0, slots = 10, connect_burst = 200;
/* source ports to bind, first to last, in turn (0: the kernel picks; it searches its whole
 * range on every connect, which grows slow with 10,000s of connections to one port) */
static int first_port = 0, last_port = 0, next_port = 0;
static double rate = 70, tick = 0.1, seconds = 30, reader_after = 1, delay = 5, end_after = 30;
static long idle_count = 0;
static char header_path[4096], body_path[4096];
static struct game *games;
static size_t game_count;

/* header + body in one array: what writers send after their prefix, what readers expect */
static unsigned char *expected;
static size_t header_size, expected_size;

static struct conn *conns;
static size_t conn_count;
static int epfd;

/* --- results ---------------------------------------------------------------------------- */

#define LAG_MIN_MS (-60000)
#define LAG_MAX_MS 120000
static uint32_t lag_hist[LAG_MAX_MS - LAG_MIN_MS + 1];
static uint64_t lag_samples, bytes_sent, reader_bytes, send_blocked, skipped_slots, send_errors;
static double max_slot_late;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, errno ? strerror(errno) : "invalid");
    exit(2);
}

static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) < 0)
        die(path);
    unsigned char *data = malloc(st.st_size + 1);
    if (!data || fread(data, 1, st.st_size, f) != (size_t)st.st_size)
        die(path);
    fclose(f);
    *size = st.st_size;
    return data;
}

static void read_plan(const char *path) {
    FILE *f = fopen(path, "r");
    char line[8192], key[64];
    size_t capacity = 0;
    if (!f)
        die(path);
    while (fgets(line, sizeof line, f)) {
        int used;
        if (sscanf(line, "%63s %n", key, &used) < 1)
            continue;
        const char *v = line + used;
        if (!strcmp(key, "port")) port = atoi(v);
        else if (!strcmp(key, "header")) sscanf(v, "%4095s", header_path);
        else if (!strcmp(key, "body")) sscanf(v, "%4095s", body_path);
        else if (!strcmp(key, "rate")) rate = atof(v);
        else if (!strcmp(key, "tick")) tick = atof(v);
        else if (!strcmp(key, "slots")) slots = atoi(v);
        else if (!strcmp(key, "seconds")) seconds = atof(v);
        else if (!strcmp(key, "reader_after")) reader_after = atof(v);
        else if (!strcmp(key, "delay")) delay = atof(v);
        else if (!strcmp(key, "end_after")) end_after = atof(v);
        else if (!strcmp(key, "idle")) idle_count = atol(v);
        else if (!strcmp(key, "connect_burst")) connect_burst = atoi(v);
        else if (!strcmp(key, "ports")) sscanf(v, "%d %d", &first_port, &last_port);
        else if (!strcmp(key, "game")) {
            if (game_count == capacity) {
                capacity = capacity ? capacity * 2 : 256;
                games = realloc(games, capacity * sizeof *games);
                if (!games)
                    die("memory");
            }
            struct game *g = &games[game_count++];
            if (sscanf(v, "%u %u %u", &g->id, &g->writers, &g->readers) != 3)
                die("a game line needs: id writers readers");
        } else {
            errno = 0;
            fprintf(stderr, "loadgen: unknown plan key %s\n", key);
            exit(2);
        }
    }
    fclose(f);
    if (port <= 0 || !header_path[0] || !body_path[0] || slots < 1 || tick <= 0 ||
        connect_burst < 1 || first_port < 0 || last_port < first_port || last_port > 65535) {
        errno = 0;
        die("the plan needs port, header, body (and slots, tick, connect_burst > 0, ports in "
            "order)");
    }
    next_port = first_port;
}

/* --- connections -------------------------------------------------------------------------- */

/* The connection's "P/<game>/w<n>\0" or "G/<game>/r<n>\0" into out; its size (with the NUL). */
static size_t prefix(const struct conn *c, char *out) {
    int n = sprintf(out, "%c/%u/%c%u", c->kind == READER ? 'G' : 'P', games[c->game].id,
                    c->kind == READER ? 'r' : 'w', c->number);
    return n + 1;
}

static void poll_set(struct conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->polled_out = out;
}

static void finish(struct conn *c, enum state state) {
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->state = state;
}

/* A new socket connecting to the server (from the next free port of the plan's range);
 * -1 if none could be made. */
static int connect_socket(void) {
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    /* up to 64 ports of the range (other sockets hold some), then one the kernel picks */
    int range = last_port - first_port + 1, bound = !first_port ? 0 : range < 64 ? range : 64;
    for (int attempt = 0; attempt <= bound; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (attempt < bound) {
            struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(next_port),
                                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int on = 1;
            next_port = next_port == last_port ? first_port : next_port + 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
            if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
                close(fd); /* in use by someone else: the next one */
                continue;
            }
        }
        if (connect(fd, (struct sockaddr *)&server, sizeof server) == 0 || errno == EINPROGRESS)
            return fd;
        int error = errno;
        close(fd);
        if (error != EADDRNOTAVAIL && error != EADDRINUSE)
            return -1;
    }
    return -1;
}

static void start_connect(struct conn *c) {
    c->since = now();
    c->fd = connect_socket();
    if (c->fd < 0) {
        finish(c, FAILED);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->state = CONNECTING;
    c->polled_out = 1;
}

/* Send what is due: the prefix, then header + body up to c->target (a reader: its prefix).
 * Returns 0 if the connection failed. */
static int flush_out(struct conn *c) {
    char text[64];
    size_t plen = c->prefix_size;
    if (c->sent < plen)
        prefix(c, text);
    uint64_t target = c->kind == READER ? plen : c->target;
    while (c->sent < target) {
        struct iovec iov[2];
        int count = 0;
        if (c->sent < plen)
            iov[count++] = (struct iovec){text + c->sent, plen - c->sent};
        uint64_t from = c->sent < plen ? 0 : c->sent - plen;
        if (target > plen && from < target - plen)
            iov[count++] = (struct iovec){expected + from, target - plen - from};
        struct msghdr message = {.msg_iov = iov, .msg_iovlen = count};
        ssize_t n = sendmsg(c->fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                send_blocked++;
                if (!c->polled_out)
                    poll_set(c, 1);
                return 1;
            }
            send_errors++;
            finish(c, DROPPED);
            return 0;
        }
        c->sent += n;
        bytes_sent += n;
    }
    if (c->polled_out)
        poll_set(c, 0);
    return 1;
}

static uint64_t body_due(double at, double start) {
    double due = floor((at - start) * rate);
    if (due < 0)
        due = 0;
    if (due > (double)(expected_size - header_size))
        due = (double)(expected_size - header_size);
    return (uint64_t)due;
}

static void writer_fin(struct conn *c) {
    if (c->state == OPEN && c->sent == c->target) {
        shutdown(c->fd, SHUT_WR);
        c->state = FIN_SENT;
    }
}

static int lag_index(double lag) {
    long ms = lround(lag * 1000);
    if (ms < LAG_MIN_MS) ms = LAG_MIN_MS;
    if (ms > LAG_MAX_MS) ms = LAG_MAX_MS;
    return (int)(ms - LAG_MIN_MS);
}

static unsigned char chunk[1 << 18];

static void on_readable(struct conn *c, double start, double at) {
    for (;;) {
        ssize_t n = recv(c->fd, chunk, sizeof chunk, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            finish(c, c->kind == WRITER && c->state == FIN_SENT ? CLOSED : DROPPED);
            return;
        }
        if (n == 0) {
            c->got_eof = 1;
            /* a writer is done once the server closes after our FIN; a reader at EOF */
            finish(c, c->kind == READER || c->state == FIN_SENT ? CLOSED : DROPPED);
            return;
        }
        if (c->kind != READER)
            continue; /* the server sends writers nothing; discard it */
        if (!c->mismatch && (c->received + n > expected_size ||
                             memcmp(expected + c->received, chunk, n) != 0))
            c->mismatch = 1;
        c->received += n;
        reader_bytes += n;
        if (c->received > header_size && at < start + seconds) {
            double due = start + (c->received - header_size) / rate + delay;
            if (due >= c->since) {
                lag_hist[lag_index(at - due)]++;
                lag_samples++;
            }
        }
        if ((size_t)n < sizeof chunk)
            return;
    }
}

static void on_event(struct conn *c, uint32_t events, double start, double at) {
    if (c->state == CONNECTING) {
        int error = 0;
        socklen_t size = sizeof error;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
        if (error || (events & (EPOLLERR | EPOLLHUP))) {
            finish(c, FAILED);
            return;
        }
        c->state = OPEN;
        c->since = at;
        poll_set(c, 0);
        if (c->kind != IDLE && flush_out(c) && c->kind == WRITER && start > 0 && at >= start +
            seconds)
            writer_fin(c); /* connected after the stop: a late writer leaves at once */
        return;
    }
    if (events & EPOLLOUT && c->polled_out) {
        if (!flush_out(c))
            return;
        if (c->kind == WRITER && start > 0 && at >= start + seconds)
            writer_fin(c);
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        on_readable(c, start, at);
}

/* --- output ------------------------------------------------------------------------------- */

static double percentile(double q) {
    uint64_t wanted = (uint64_t)ceil(q * lag_samples), seen = 0;
    if (!lag_samples)
        return NAN;
    for (int i = 0; i <= LAG_MAX_MS - LAG_MIN_MS; i++) {
        seen += lag_hist[i];
        if (seen >= wanted && seen)
            return (i + LAG_MIN_MS) / 1000.0;
    }
    return LAG_MAX_MS / 1000.0;
}

static void print_number(const char *key, double value) {
    if (isnan(value))
        printf("\"%s\":null,", key);
    else
        printf("\"%s\":%.3f,", key, value);
}

static void report(double connect_seconds, double stream_cpu, uint64_t *body_min,
                   uint64_t *body_max) {
    uint64_t count[3] = {0}, connected[3] = {0}, failed[3] = {0}, dropped[3] = {0};
    uint64_t writers_closed = 0, writers_unanswered = 0, complete = 0, short_ = 0,
             mismatch = 0, refused = 0, open_ = 0;
    for (size_t i = 0; i < conn_count; i++) {
        struct conn *c = &conns[i];
        count[c->kind]++;
        if (c->state == FAILED || c->state == QUEUED || c->state == CONNECTING) {
            failed[c->kind]++;
            continue;
        }
        connected[c->kind]++;
        if (c->kind == WRITER) {
            if (c->state == DROPPED) dropped[WRITER]++;
            else if (c->state == CLOSED) writers_closed++;
            else writers_unanswered++; /* FIN sent, the server had not closed at the end */
        } else if (c->kind == IDLE) {
            if (c->state == DROPPED) dropped[IDLE]++;
        } else if (c->received == 0 && c->state != OPEN) {
            refused++;
        } else if (c->state == OPEN) {
            open_++;
        } else if (c->mismatch) {
            mismatch++;
        } else if (c->got_eof && c->received == header_size + body_max[c->game]) {
            complete++;
        } else {
            short_++; /* EOF early, or reset */
        }
    }
    uint64_t held = connected[WRITER] - dropped[WRITER] + connected[IDLE] - dropped[IDLE] +
                    connected[READER] - refused;
    printf("{\"writers\":%lu,\"writers_connected\":%lu,\"writers_failed\":%lu,"
           "\"writers_dropped\":%lu,\"writers_closed\":%lu,\"writers_unanswered\":%lu,",
           count[WRITER], connected[WRITER], failed[WRITER], dropped[WRITER], writers_closed,
           writers_unanswered);
    printf("\"idle\":%lu,\"idle_connected\":%lu,\"idle_failed\":%lu,\"idle_dropped\":%lu,",
           count[IDLE], connected[IDLE], failed[IDLE], dropped[IDLE]);
    printf("\"readers\":%lu,\"readers_connected\":%lu,\"readers_failed\":%lu,"
           "\"readers_complete\":%lu,\"readers_short\":%lu,\"readers_mismatch\":%lu,"
           "\"readers_refused\":%lu,\"readers_open\":%lu,",
           count[READER], connected[READER], failed[READER], complete, short_, mismatch,
           refused, open_);
    printf("\"held\":%lu,\"refused\":%lu,", held,
           failed[WRITER] + failed[IDLE] + failed[READER] + dropped[WRITER] + dropped[IDLE] +
               refused);
    printf("\"bytes_sent\":%lu,\"reader_bytes\":%lu,\"send_blocked\":%lu,\"send_errors\":%lu,"
           "\"skipped_slots\":%lu,",
           bytes_sent, reader_bytes, send_blocked, send_errors, skipped_slots);
    print_number("max_slot_late", max_slot_late);
    print_number("connect_seconds", connect_seconds);
    print_number("cpu_stream", stream_cpu);
    print_number("cpu", cpu_seconds());
    printf("\"lag_samples\":%lu,", lag_samples);
    print_number("lag_p50", percentile(0.50));
    print_number("lag_p99", percentile(0.99));
    print_number("lag_max", percentile(1.0));
    printf("\"lag_ms\":{");
    const char *comma = "";
    for (int i = 0; i <= LAG_MAX_MS - LAG_MIN_MS; i++)
        if (lag_hist[i]) {
            printf("%s\"%d\":%u", comma, i + LAG_MIN_MS, lag_hist[i]);
            comma = ",";
        }
    printf("},\"games\":[");
    for (size_t g = 0; g < game_count; g++)
        printf("%s[%u,%lu,%lu]", g ? "," : "", games[g].id, body_min[g], body_max[g]);
    printf("]}\n");
    fflush(stdout);
}

/* --- the run --------------------------------------------------------------------------------- */

static size_t in_flight;

/* Start queued connects of [from, to) while fewer than connect_burst are in flight; the
 * next queued index. Also fails connects older than 30 s. */
static size_t pump_connects(size_t next, size_t to) {
    while (next < to && in_flight < (size_t)connect_burst) {
        start_connect(&conns[next]);
        in_flight += conns[next++].state == CONNECTING;
    }
    return next;
}

static void count_connects(size_t from, size_t to, double at) {
    in_flight = 0;
    for (size_t i = from; i < to; i++) {
        if (conns[i].state == CONNECTING && at - conns[i].since > 30)
            finish(&conns[i], FAILED);
        if (conns[i].state == CONNECTING)
            in_flight++;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: loadgen PLAN\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    read_plan(argv[1]);
    unsigned char *header = read_file(header_path, &header_size);
    size_t body_size;
    unsigned char *body = read_file(body_path, &body_size);
    expected_size = header_size + body_size;
    expected = malloc(expected_size);
    if (!expected)
        die("memory");
    memcpy(expected, header, header_size);
    memcpy(expected + header_size, body, body_size);
    free(header);
    free(body);

    size_t writer_total = 0, reader_total = 0;
    for (size_t g = 0; g < game_count; g++) {
        writer_total += games[g].writers;
        reader_total += games[g].readers;
    }
    conn_count = writer_total + idle_count + reader_total;
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    if (conn_count + 16 > limit.rlim_cur) {
        fprintf(stderr, "loadgen: %zu connections need more than RLIMIT_NOFILE %lu files\n",
                conn_count, (unsigned long)limit.rlim_cur);
        return 2;
    }
    /* layout: writers (slot by slot below), idle connections, readers */
    conns = calloc(conn_count, sizeof *conns);
    uint32_t *slot_of = calloc(writer_total + 1, sizeof *slot_of);
    uint64_t *body_min = calloc(game_count + 1, sizeof *body_min);
    uint64_t *body_max = calloc(game_count + 1, sizeof *body_max);
    if (!conns || !slot_of || !body_min || !body_max)
        die("memory");
    size_t n = 0;
    for (size_t g = 0; g < game_count; g++)
        for (uint32_t w = 0; w < games[g].writers; w++, n++)
            conns[n] = (struct conn){.fd = -1, .kind = WRITER, .game = g, .number = w};
    for (long i = 0; i < idle_count; i++, n++)
        conns[n] = (struct conn){.fd = -1, .kind = IDLE};
    size_t first_reader = n;
    for (size_t g = 0; g < game_count; g++)
        for (uint32_t r = 0; r < games[g].readers; r++, n++)
            conns[n] = (struct conn){.fd = -1, .kind = READER, .game = g, .number = r};

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event stdin_event = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &stdin_event) < 0)
        die("epoll_ctl stdin");
    static struct epoll_event events[4096];
    char command[256];
    size_t command_length = 0;

    /* writers get their prefix and header as soon as they connect */
    for (size_t i = 0; i < conn_count; i++) {
        conns[i].prefix_size = conns[i].kind == IDLE ? 0 : prefix(&conns[i], command);
        conns[i].target = conns[i].prefix_size + header_size;
    }

    double begun = now(), start = 0, stream_cpu = 0, stream_cpu_from = 0;
    double readers_at = 0, stop_at = 0, deadline = 0, last_sweep = begun;
    size_t next = 0;          /* next queued connection to connect */
    size_t queue_end = first_reader;
    int phase = 0;            /* 0 connect, 1 wait for start, 2 stream, 3 end */
    uint64_t slot_number = 0; /* next slot to send: slot_number % slots of tick / slots */
    double connect_seconds = 0;

    for (;;) {
        double at = now();
        if (at - last_sweep >= 1) {
            count_connects(0, conn_count, at);
            last_sweep = at;
        }
        next = pump_connects(next, queue_end);
        if (phase == 0 && next == queue_end && in_flight == 0) {
            connect_seconds = at - begun;
            uint64_t up = 0;
            for (size_t i = 0; i < first_reader; i++)
                up += conns[i].state == OPEN;
            printf("{\"event\":\"connected\",\"open\":%lu,\"of\":%zu,\"seconds\":%.3f}\n", up,
                   first_reader, connect_seconds);
            fflush(stdout);
            phase = 1;
        }
        if (phase == 2) {
            for (;;) {
                double slot_time = start + slot_number * tick / slots;
                if (at < slot_time || slot_time >= stop_at)
                    break;
                double late = at - slot_time;
                size_t slot = slot_number++ % slots;
                if (late > tick) {
                    /* behind: its writers send all that is due at their next slot instead */
                    skipped_slots++;
                    continue;
                }
                if (late > max_slot_late)
                    max_slot_late = late;
                uint64_t due = body_due(slot_time, start);
                for (size_t i = slot; i < writer_total; i += slots) {
                    struct conn *c = &conns[i];
                    if (c->state != OPEN)
                        continue;
                    c->target = c->prefix_size + header_size + due;
                    flush_out(c);
                }
            }
            if (at >= stop_at) {
                uint64_t due = body_due(stop_at, start);
                for (size_t i = 0; i < first_reader; i++) {
                    struct conn *c = &conns[i];
                    if (c->kind == IDLE) {
                        if (c->state == OPEN)
                            finish(c, CLOSED);
                        continue;
                    }
                    c->target = c->prefix_size + header_size + due;
                    if (c->state == OPEN && flush_out(c))
                        writer_fin(c);
                }
                stream_cpu = cpu_seconds() - stream_cpu_from;
                deadline = at + end_after;
                phase = 3;
            }
        }
        if (phase >= 2 && readers_at && at >= readers_at) {
            queue_end = conn_count; /* the readers connect now */
            readers_at = 0;
            next = pump_connects(next, queue_end);
        }
        if (phase == 3) {
            int busy = readers_at || next < queue_end || in_flight > 0;
            for (size_t i = 0; i < conn_count && !busy; i++)
                busy = conns[i].state == OPEN || conns[i].state == FIN_SENT;
            if (!busy || at >= deadline)
                break;
        }

        double wake = at + 1;
        if (phase == 2) {
            double slot_time = start + slot_number * tick / slots;
            if (slot_time < wake) wake = slot_time;
            if (stop_at < wake) wake = stop_at;
        }
        if (readers_at && readers_at < wake)
            wake = readers_at;
        if (phase == 3 && deadline < wake)
            wake = deadline;
        int timeout = wake <= at ? 0 : (int)ceil((wake - at) * 1000);
        int ready = epoll_wait(epfd, events, sizeof events / sizeof *events, timeout);
        if (ready < 0 && errno != EINTR)
            die("epoll_wait");
        at = now();
        for (int e = 0; e < ready; e++) {
            uint32_t index = events[e].data.u32;
            if (index == UINT32_MAX) { /* a command on stdin: "start T" */
                ssize_t got = read(STDIN_FILENO, command + command_length,
                                   sizeof command - 1 - command_length);
                if (got <= 0) {
                    errno = 0;
                    die("stdin closed before the start");
                }
                command_length += got;
                command[command_length] = '\0';
                if (strchr(command, '\n')) {
                    if (phase != 1 || sscanf(command, "start %lf", &start) != 1) {
                        errno = 0;
                        die("expected \"start T\" after the connected event");
                    }
                    epoll_ctl(epfd, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
                    readers_at = reader_total ? start + reader_after : 0;
                    stop_at = start + seconds;
                    stream_cpu_from = cpu_seconds();
                    phase = 2;
                }
                continue;
            }
            struct conn *c = &conns[index];
            if (c->fd < 0)
                continue;
            int was_connecting = c->state == CONNECTING;
            on_event(c, events[e].events, start, at);
            if (was_connecting && c->state != CONNECTING)
                in_flight--;
        }
    }

    for (size_t g = 0; g < game_count; g++)
        body_min[g] = UINT64_MAX;
    for (size_t i = 0; i < writer_total; i++) {
        struct conn *c = &conns[i];
        uint64_t start_of_body = c->prefix_size + header_size;
        uint64_t body_sent = c->sent > start_of_body ? c->sent - start_of_body : 0;
        if (body_sent < body_min[c->game]) body_min[c->game] = body_sent;
        if (body_sent > body_max[c->game]) body_max[c->game] = body_sent;
    }
    for (size_t g = 0; g < game_count; g++)
        if (body_min[g] == UINT64_MAX)
            body_min[g] = 0;
    report(connect_seconds, stream_cpu, body_min, body_max);
    return 0;
}
