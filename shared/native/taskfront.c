/*
 * kuasar-taskfront: owns the engine's task socket so a task server crash or upgrade is invisible to the engine.
 *
 * One front per sandbox type listens on the task address the engine holds (<dir>/task.sock). For every engine
 * connection it opens one connection to the task server (the backend, on a private socket) and copies ttrpc
 * frames both ways, stream ids unchanged. When the backend goes away the engine connection stays open and the
 * front keeps every Task API call in flight; once a backend answers on the private socket again (restarted by
 * the sandboxer, or replaced by a live upgrade) the front sends them again on a new connection:
 *
 * - reads (State, Pids, Stats, Connect) and Wait are idempotent and are simply sent again, so a Wait held by
 *   the engine never fails with "ttrpc: closed"; the new backend answers it with the real exit status (it
 *   re-adopts containers and claims exits recorded while it was down);
 * - calls that change something (Create, Start, Exec, Kill, Delete, ...) carry a request id in ttrpc metadata
 *   (kuasar-request-id) that the backend journals (kuasar_shared.task.journal): a replayed call it finished is
 *   answered from the journal, one it never saw runs normally, and one it was running when it died is settled
 *   against the container's actual state, so nothing runs twice. The id is <instance>-<connection>-<stream>:
 *   12 random hex digits per front process, the engine connection's number and the call's stream id;
 * - streams (stdio, any service but the Task API) cannot be replayed (their data is consumed) and fail with
 *   UNAVAILABLE.
 *
 * The front is deliberately tiny and never needs upgrading: one thread, one epoll loop, no library beyond libc.
 * It bounds the number of engine connections, the bytes it reads ahead per connection and the bytes of requests
 * it holds unanswered over all connections (the task server then holds no more); a request over ttrpc's 4 MiB
 * is skipped and refused with RESOURCE_EXHAUSTED, as a ttrpc server does. With no engine connection open it
 * exits once its socket path is gone or no task server answered for a minute. Log lines go to stderr.
 *
 * Command line: --listen PATH --backend PATH [--max-connections N (1024)] [--buffer-limit BYTES]
 *               [--inflight-limit BYTES]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#define HEADER_SIZE 10
#define MAX_MESSAGE (4u << 20)
/* engine connections served at once: containerd 2.x opens one per pod (its shim client per sandbox), and a node
 * runs up to the kubelet's --max-pods (110 by default, often raised to 250-500) */
#define MAX_CONNECTIONS 1024
#define TYPE_REQUEST 0x1
#define TYPE_RESPONSE 0x2
/* gRPC status codes the front answers with itself */
#define UNAVAILABLE 14
#define RESOURCE_EXHAUSTED 8
#define REQUEST_ID_KEY "kuasar-request-id"
/* milliseconds between attempts to reach a backend that is down */
#define RETRY_INTERVAL_MS 50
/* seconds between checks that the front is still wanted (see still_wanted) */
#define CHECK_INTERVAL 5.0
/* an idle front whose backend has not answered for this long exits */
#define ORPHAN_EXIT 60.0
#define READ_CHUNK (1 << 16)

static const char *const TASK_SERVICES[] = {"containerd.task.v3.Task", "containerd.task.v2.Task", NULL};
/* Task API calls with effects: tagged with a request id the backend journals (task/service.py's MUTATING) */
static const char *const MUTATING[] = {"Create", "Start", "Delete", "Exec", "Kill", "Pause", "Resume",
                                       "Checkpoint", "ResizePty", "CloseIO", "Update", "Shutdown", NULL};

static void say(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* One line on stderr (the sandboxer points it at its log). */
static void say(const char *format, ...)
{
    char line[1024];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, " task-front[%d]: ", (int)getpid());
    va_list args;
    va_start(args, format);
    int m = vsnprintf(line + n, sizeof line - n - 1, format, args);
    va_end(args);
    n = m < 0 ? n : (n + (size_t)m > sizeof line - 2 ? sizeof line - 2 : n + (size_t)m);
    line[n++] = '\n';
    ssize_t ignored = write(2, line, n);
    (void)ignored;
}

static void die(const char *what)
{
    say("%s: %s; exiting", what, strerror(errno));
    exit(1);
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* -- byte buffers: data at p[off, off + len) --------------------------------------------------------------- */
struct buf {
    uint8_t *p;
    size_t off, len, cap;
};

static uint8_t *buf_data(struct buf *b) { return b->p + b->off; }

/* Room for n more bytes at the end. */
static void buf_room(struct buf *b, size_t n)
{
    if (b->off + b->len + n <= b->cap)
        return;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
        if (b->len + n <= b->cap)
            return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        die("out of memory");
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (!n)
        return;
    buf_room(b, n);
    memcpy(b->p + b->off + b->len, data, n);
    b->len += n;
}

/* An empty buffer holds no memory: an idle connection costs its link alone. */
static void buf_clear(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void buf_drop(struct buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (!b->len)
        buf_clear(b);
}

/* -- ttrpc frames and the protobuf of their envelope ------------------------------------------------------- */
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static size_t put_varint(uint8_t *out, uint64_t value)
{
    size_t n = 0;
    while (value >= 0x80) {
        out[n++] = (uint8_t)(value & 0x7f) | 0x80;
        value >>= 7;
    }
    out[n++] = (uint8_t)value;
    return n;
}

/* A varint at data[*pos]; 0 when it runs past end or past 64 bits. */
static int get_varint(const uint8_t *data, size_t end, size_t *pos, uint64_t *value)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64 && *pos < end; shift += 7) {
        uint8_t byte = data[(*pos)++];
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (byte < 0x80) {
            *value = v;
            return 1;
        }
    }
    return 0;
}

struct slice {
    const uint8_t *p;
    size_t n;
};

/* service (field 1) and method (field 2) of a serialized ttrpc Request; both empty when it does not parse. */
static void envelope(const uint8_t *data, size_t len, struct slice *service, struct slice *method)
{
    struct slice none = {data, 0};
    size_t pos = 0;
    *service = *method = none;
    while (pos < len) {
        uint64_t key, value;
        if (!get_varint(data, len, &pos, &key))
            goto bad;
        switch (key & 7) {
        case 0:
            if (!get_varint(data, len, &pos, &value))
                goto bad;
            break;
        case 2:
            if (!get_varint(data, len, &pos, &value) || value > len - pos)
                goto bad;
            if (key >> 3 == 1)
                *service = (struct slice){data + pos, (size_t)value};
            else if (key >> 3 == 2)
                *method = (struct slice){data + pos, (size_t)value};
            pos += (size_t)value;
            break;
        case 1:
            if (len - pos < 8)
                goto bad;
            pos += 8;
            break;
        case 5:
            if (len - pos < 4)
                goto bad;
            pos += 4;
            break;
        default:
            goto bad;
        }
    }
    return;
bad:
    *service = *method = none;
}

static int one_of(struct slice s, const char *const *names)
{
    for (; *names; names++)
        if (strlen(*names) == s.n && memcmp(*names, s.p, s.n) == 0)
            return 1;
    return 0;
}

static void put_header(uint8_t *out, uint32_t length, uint32_t sid, uint8_t type, uint8_t flags)
{
    put32(out, length);
    put32(out + 4, sid);
    out[8] = type;
    out[9] = flags;
}

/* A ttrpc Response frame carrying only a status, added to out. */
static void add_response(struct buf *out, uint32_t sid, unsigned code, const char *message)
{
    size_t mlen = strlen(message);
    uint8_t status[32], head[HEADER_SIZE + 16];
    size_t s = 0;
    status[s++] = 1 << 3;
    s += put_varint(status + s, code);
    status[s++] = 2 << 3 | 2;
    s += put_varint(status + s, mlen);
    size_t status_len = s + mlen;
    size_t h = HEADER_SIZE;
    head[h++] = 1 << 3 | 2;
    h += put_varint(head + h, status_len);
    put_header(head, (uint32_t)(h - HEADER_SIZE + status_len), sid, TYPE_RESPONSE, 0);
    buf_add(out, head, h);
    buf_add(out, status, s);
    buf_add(out, message, mlen);
}

/* -- links ------------------------------------------------------------------------------------------------- */
struct pending {
    uint32_t sid;
    int replayable;
    size_t charge;
    size_t len;
    uint8_t *frame;
};

/*
 * One engine connection and its current backend connection.
 *
 * pend holds every request sent on and not yet answered; what the front reads ahead is bounded by the buffer
 * limit (ein + bout, and separately the pending copies). A frame's bytes are charged to the front's budget
 * (reserve) before its body is read, and released when it is answered (data frames: when passed on).
 * Each link owns its two sockets; it is closed when the engine closes its side; the backend side is replaced,
 * never closed for the engine.
 */
struct link {
    struct link *next;
    int esock, bsock;
    int emask, bmask; /* registered epoll masks; -1: not registered */
    struct buf ein, eout, bin, bout;
    struct pending *pend;
    size_t npend, cappend;
    size_t pending_bytes;
    size_t reserved; /* budget reserved for the frame being read */
    uint64_t skip;   /* bytes left of an oversized frame */
    uint32_t skip_stream;
    unsigned long number;
    int waiting, blocked;
};

static struct {
    const char *listen, *backend;
    struct sockaddr_un backend_addr;
    unsigned long max_connections;
    size_t buffer_limit, inflight_limit;
    /* bytes of requests read and not yet answered, over every link: bounds what the front and the task server
     * hold at once (16 engine connections sending 4 MiB each cost the server 70 MB) */
    size_t inflight;
    int released, nblocked, nwaiting;
    char instance[13];
    int epoll, listener;
    ino_t inode;
    struct link *links, *dead;
    unsigned long nlinks, count;
    double down_since; /* < 0: the backend is up */
    double last_check, answered_at;
} F;

static void engine_frames(struct link *l);
static void update(struct link *l);

/* Charge size bytes to the budget; one frame always fits when nothing is charged. */
static int reserve(size_t size)
{
    if (F.inflight && F.inflight + size > F.inflight_limit)
        return 0;
    F.inflight += size;
    return 1;
}

static void release(size_t size)
{
    F.inflight -= size;
    if (size && F.nblocked)
        F.released = 1;
}

static void forget(struct link *l, uint32_t sid)
{
    for (size_t i = 0; i < l->npend; i++) {
        if (l->pend[i].sid != sid)
            continue;
        struct pending done = l->pend[i];
        l->pend[i] = l->pend[--l->npend];
        l->pending_bytes -= done.charge;
        release(done.charge);
        free(done.frame);
        return;
    }
}

/* Remember a request for replay, tagging calls with effects with a request id; returns its copy. */
static struct pending *request(struct link *l, uint32_t sid, const uint8_t *frame, size_t len, size_t charge)
{
    struct slice service, method;
    envelope(frame + HEADER_SIZE, len - HEADER_SIZE, &service, &method);
    int replayable = one_of(service, TASK_SERVICES);
    uint8_t tag[96];
    size_t t = 0;
    if (replayable && one_of(method, MUTATING)) {
        /* metadata (repeated field 5) {key: kuasar-request-id (1), value: <instance>-<link>-<sid> (2)} */
        char id[48];
        int idlen = snprintf(id, sizeof id, "%s-%lu-%u", F.instance, l->number, sid);
        size_t keylen = sizeof REQUEST_ID_KEY - 1;
        size_t inner = 2 + keylen + 2 + (size_t)idlen;
        tag[t++] = 5 << 3 | 2;
        t += put_varint(tag + t, inner);
        tag[t++] = 1 << 3 | 2;
        tag[t++] = (uint8_t)keylen;
        memcpy(tag + t, REQUEST_ID_KEY, keylen);
        t += keylen;
        tag[t++] = 2 << 3 | 2;
        tag[t++] = (uint8_t)idlen;
        memcpy(tag + t, id, (size_t)idlen);
        t += (size_t)idlen;
    }
    forget(l, sid);
    if (l->npend == l->cappend) {
        size_t cap = l->cappend ? l->cappend * 2 : 4;
        struct pending *p = realloc(l->pend, cap * sizeof *p);
        if (!p)
            die("out of memory");
        l->pend = p;
        l->cappend = cap;
    }
    struct pending *p = &l->pend[l->npend];
    p->frame = malloc(len + t);
    if (!p->frame)
        die("out of memory");
    memcpy(p->frame, frame, len);
    memcpy(p->frame + len, tag, t);
    put32(p->frame, (uint32_t)(len + t - HEADER_SIZE));
    p->sid = sid;
    p->len = len + t;
    p->replayable = replayable;
    p->charge = charge;
    l->npend++;
    l->pending_bytes += charge;
    return p;
}

/* Consume complete frames from ein; oversized ones are skipped and refused like ttrpc does. */
static void engine_frames(struct link *l)
{
    struct buf *b = &l->ein;
    for (;;) {
        if (l->skip) {
            size_t gone = l->skip < b->len ? (size_t)l->skip : b->len;
            buf_drop(b, gone);
            l->skip -= gone;
            if (l->skip)
                return;
            char message[80];
            snprintf(message, sizeof message, "message length exceeds maximum message size of %u", MAX_MESSAGE);
            add_response(&l->eout, l->skip_stream, RESOURCE_EXHAUSTED, message);
        }
        if (b->len < HEADER_SIZE)
            return;
        const uint8_t *frame = buf_data(b);
        uint32_t length = get32(frame), sid = get32(frame + 4);
        uint8_t type = frame[8];
        if (length > MAX_MESSAGE) {
            buf_drop(b, HEADER_SIZE);
            l->skip = length;
            l->skip_stream = sid;
            continue;
        }
        size_t end = HEADER_SIZE + (size_t)length;
        if (!l->reserved) {
            if (!reserve(end)) {
                if (!l->blocked) {
                    l->blocked = 1;
                    F.nblocked++;
                }
                return;
            }
            l->reserved = end;
        }
        if (b->len < end)
            return;
        size_t charge = l->reserved;
        l->reserved = 0;
        if (type == TYPE_REQUEST) {
            struct pending *p = request(l, sid, frame, end, charge);
            if (l->bsock >= 0)
                buf_add(&l->bout, p->frame, p->len);
        } else {
            release(charge);
            if (l->bsock >= 0)
                buf_add(&l->bout, frame, end);
        }
        buf_drop(b, end);
    }
}

static void release_all(struct link *l)
{
    while (l->npend)
        forget(l, l->pend[0].sid);
    release(l->reserved);
    l->reserved = 0;
}

static void backend_frames(struct link *l)
{
    struct buf *b = &l->bin;
    while (b->len >= HEADER_SIZE) {
        const uint8_t *frame = buf_data(b);
        size_t end = HEADER_SIZE + (size_t)get32(frame);
        if (b->len < end)
            return;
        if (frame[8] == TYPE_RESPONSE)
            forget(l, get32(frame + 4));
        buf_add(&l->eout, frame, end);
        buf_drop(b, end);
    }
}

static void unwatch(int fd, int *mask)
{
    if (*mask >= 0)
        epoll_ctl(F.epoll, EPOLL_CTL_DEL, fd, NULL);
    *mask = -1;
    close(fd);
}

/* Keep what can be replayed; fail streams that cannot. */
static void backend_lost(struct link *l)
{
    if (l->bsock >= 0)
        unwatch(l->bsock, &l->bmask);
    l->bsock = -1;
    buf_clear(&l->bin);
    buf_clear(&l->bout);
    for (size_t i = 0; i < l->npend;) {
        if (l->pend[i].replayable) {
            i++;
            continue;
        }
        uint32_t sid = l->pend[i].sid;
        forget(l, sid); /* moves the last one to i */
        add_response(&l->eout, sid, UNAVAILABLE, "task server restarted: stream lost, open it again");
    }
}

static int by_sid(const void *a, const void *b)
{
    uint32_t x = ((const struct pending *)a)->sid, y = ((const struct pending *)b)->sid;
    return x < y ? -1 : x > y;
}

/* Use a new backend connection: send every pending call again, oldest first. */
static void attach(struct link *l, int sock)
{
    l->bsock = sock;
    buf_clear(&l->bin);
    buf_clear(&l->bout);
    qsort(l->pend, l->npend, sizeof *l->pend, by_sid);
    for (size_t i = 0; i < l->npend; i++)
        buf_add(&l->bout, l->pend[i].frame, l->pend[i].len);
}

static int connect_backend(struct link *l)
{
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return 0;
    if (connect(sock, (struct sockaddr *)&F.backend_addr, sizeof F.backend_addr) < 0) {
        close(sock);
        return 0;
    }
    attach(l, sock);
    return 1;
}

static void set_waiting(struct link *l, int on)
{
    if (l->waiting != on)
        F.nwaiting += on ? 1 : -1;
    l->waiting = on;
}

static void lost(struct link *l)
{
    if (F.down_since < 0) {
        F.down_since = monotonic();
        say("task server connection lost; holding calls in flight until it is back");
    }
    backend_lost(l);
    set_waiting(l, 1);
}

static void close_link(struct link *l)
{
    struct link **at = &F.links;
    while (*at != l)
        at = &(*at)->next;
    *at = l->next;
    F.nlinks--;
    set_waiting(l, 0);
    if (l->blocked) {
        l->blocked = 0;
        F.nblocked--;
    }
    release_all(l);
    if (l->bsock >= 0)
        unwatch(l->bsock, &l->bmask);
    l->bsock = -1;
    unwatch(l->esock, &l->emask);
    l->esock = -1;
    /* freed after this round of events: one may still name it */
    l->next = F.dead;
    F.dead = l;
}

static void free_dead(void)
{
    while (F.dead) {
        struct link *l = F.dead;
        F.dead = l->next;
        free(l->pend);
        buf_clear(&l->ein);
        buf_clear(&l->eout);
        buf_clear(&l->bin);
        buf_clear(&l->bout);
        free(l);
    }
}

/* Send what the socket takes now: 0 when it is done with, else the error. */
static int flush(int sock, struct buf *b)
{
    while (b->len) {
        ssize_t n = send(sock, buf_data(b), b->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : errno;
        buf_drop(b, (size_t)n);
    }
    return 0;
}

static void watch(int fd, int *registered, int mask, uint64_t tag)
{
    if (*registered == mask)
        return;
    struct epoll_event ev = {.events = (uint32_t)mask, .data.u64 = tag};
    if (epoll_ctl(F.epoll, *registered < 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) < 0)
        die("epoll_ctl");
    *registered = mask;
}

/* Write what can be written now, then set the epoll masks that changed: stop reading a side whose output is
 * over the limit. */
static void update(struct link *l)
{
    if (flush(l->esock, &l->eout)) {
        close_link(l);
        return;
    }
    if (l->bsock >= 0 && flush(l->bsock, &l->bout))
        lost(l);
    size_t limit = F.buffer_limit;
    int emask = l->eout.len ? EPOLLOUT : 0;
    if (l->ein.len + l->bout.len < limit && l->pending_bytes < limit && !l->blocked)
        emask |= EPOLLIN;
    watch(l->esock, &l->emask, emask, (uintptr_t)l);
    if (l->bsock >= 0) {
        int bmask = l->bout.len ? EPOLLOUT : 0;
        if (l->eout.len + l->bin.len < limit)
            bmask |= EPOLLIN;
        watch(l->bsock, &l->bmask, bmask, (uintptr_t)l | 1);
    }
}

static void accept_all(void)
{
    for (;;) {
        int sock = accept4(F.listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (sock < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) /* EMFILE and friends: serve on */
                say("accept failed: %s", strerror(errno));
            return;
        }
        if (F.nlinks >= F.max_connections) {
            say("refusing a task connection: %lu are open (--max-connections)", F.max_connections);
            close(sock);
            continue;
        }
        struct link *l = calloc(1, sizeof *l);
        if (!l)
            die("out of memory");
        l->esock = sock;
        l->bsock = -1;
        l->emask = l->bmask = -1;
        l->number = ++F.count;
        l->next = F.links;
        F.links = l;
        F.nlinks++;
        if (!connect_backend(l))
            set_waiting(l, 1);
        update(l);
    }
}

static void event(struct link *l, int backend, uint32_t events)
{
    static uint8_t chunk[READ_CHUNK];
    int sock = backend ? l->bsock : l->esock;
    if (sock < 0)
        return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t n = recv(sock, chunk, sizeof chunk, MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            n = 0;
        if (n == 0) {
            if (!backend) {
                close_link(l);
                return;
            }
            lost(l);
        } else if (n > 0 && backend) {
            buf_add(&l->bin, chunk, (size_t)n);
            backend_frames(l);
        } else if (n > 0) {
            buf_add(&l->ein, chunk, (size_t)n);
            engine_frames(l);
        }
    }
    update(l);
}

static void reconnect(void)
{
    for (struct link *l = F.links, *next; l; l = next) {
        next = l->next;
        if (!l->waiting)
            continue;
        if (!connect_backend(l))
            return;
        set_waiting(l, 0);
        update(l);
    }
    if (F.down_since >= 0) {
        say("task server is back after %.2f s; calls in flight sent again", monotonic() - F.down_since);
        F.down_since = -1;
    }
}

/* Let links waiting for budget read on, while it lasts. */
static void unblock(void)
{
    F.released = 0;
    for (struct link *l = F.links, *next; l; l = next) {
        next = l->next;
        if (!l->blocked)
            continue;
        l->blocked = 0;
        F.nblocked--;
        engine_frames(l);
        update(l);
    }
}

/* False once no engine connection is open and either our socket path is gone (the sandboxer's directory was
 * removed) or no task server answered for ORPHAN_EXIT seconds (the sandboxer and its task server were stopped
 * for good); a later sandboxer starts a new front. */
static int still_wanted(void)
{
    double now = monotonic();
    if (F.nlinks || now - F.last_check < CHECK_INTERVAL)
        return 1;
    F.last_check = now;
    struct stat st;
    if (stat(F.listen, &st) < 0 || st.st_ino != F.inode)
        return 0;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        struct timeval second = {1, 0};
        setsockopt(probe, SOL_SOCKET, SO_SNDTIMEO, &second, sizeof second);
        if (connect(probe, (struct sockaddr *)&F.backend_addr, sizeof F.backend_addr) == 0)
            F.answered_at = now;
        close(probe);
    }
    return now - F.answered_at < ORPHAN_EXIT;
}

static void usage(const char *problem)
{
    fprintf(stderr, "kuasar-taskfront: %s\nusage: kuasar-taskfront --listen PATH --backend PATH "
                    "[--max-connections N] [--buffer-limit BYTES] [--inflight-limit BYTES]\n", problem);
    exit(2);
}

static unsigned long long number(const char *option, const char *text)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end || errno) {
        char problem[256];
        snprintf(problem, sizeof problem, "%s wants a non-negative integer, got '%.100s'", option, text);
        usage(problem);
    }
    return value;
}

static void unix_address(struct sockaddr_un *addr, const char *option, const char *path)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    if (!*path || strlen(path) >= sizeof addr->sun_path) {
        char problem[256];
        snprintf(problem, sizeof problem, "%s wants a socket path of 1 to %zu bytes, got '%.100s'", option,
                 sizeof addr->sun_path - 1, path);
        usage(problem);
    }
    strcpy(addr->sun_path, path);
}

static void parse(int argc, char **argv)
{
    F.max_connections = MAX_CONNECTIONS;
    F.buffer_limit = MAX_MESSAGE + HEADER_SIZE + (64u << 10);
    F.inflight_limit = 8u << 20;
    for (int i = 1; i < argc; i += 2) {
        const char *name = argv[i], *value = argv[i + 1];
        char problem[256];
        if (!value) {
            snprintf(problem, sizeof problem, "%.100s needs a value", name);
            usage(problem);
        }
        if (!strcmp(name, "--listen"))
            F.listen = value;
        else if (!strcmp(name, "--backend"))
            F.backend = value;
        else if (!strcmp(name, "--max-connections"))
            F.max_connections = (unsigned long)number(name, value);
        else if (!strcmp(name, "--buffer-limit")) {
            unsigned long long limit = number(name, value);
            F.buffer_limit = limit > MAX_MESSAGE + HEADER_SIZE ? (size_t)limit : MAX_MESSAGE + HEADER_SIZE;
        } else if (!strcmp(name, "--inflight-limit"))
            F.inflight_limit = (size_t)number(name, value);
        else {
            snprintf(problem, sizeof problem, "unknown option '%.100s'", name);
            usage(problem);
        }
    }
    if (!F.listen || !F.backend)
        usage("--listen and --backend are required");
    unix_address(&F.backend_addr, "--backend", F.backend);
}

static void start(void)
{
    struct sockaddr_un addr;
    unix_address(&addr, "--listen", F.listen);
    uint8_t random[6];
    if (getrandom(random, sizeof random, 0) != sizeof random)
        die("getrandom");
    for (int i = 0; i < 6; i++)
        snprintf(F.instance + 2 * i, 3, "%02x", random[i]);
    F.epoll = epoll_create1(EPOLL_CLOEXEC);
    if (F.epoll < 0)
        die("epoll_create1");
    F.listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (F.listener < 0)
        die("socket");
    if (unlink(F.listen) < 0 && errno != ENOENT)
        die(F.listen);
    mode_t mask = umask(0177); /* the engine's socket is root's alone from the start */
    if (bind(F.listener, (struct sockaddr *)&addr, sizeof addr) < 0)
        die(F.listen);
    umask(mask);
    if (listen(F.listener, 128) < 0)
        die("listen");
    struct stat st;
    if (stat(F.listen, &st) < 0)
        die(F.listen);
    F.inode = st.st_ino;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll_ctl(F.epoll, EPOLL_CTL_ADD, F.listener, &ev) < 0)
        die("epoll_ctl");
    F.down_since = -1;
    F.last_check = F.answered_at = monotonic();
}

int main(int argc, char **argv)
{
    parse(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* two descriptors per engine connection: 1024 connections need more than the usual soft limit of 1024 */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    /* buffers of big frames are mapped and unmapped each time, never kept in the heap (glibc otherwise raises
     * the threshold to the largest size freed, and a 16 x 4 MiB flood would stay resident) */
    mallopt(M_MMAP_THRESHOLD, 128 << 10);
    start();
    say("serving %s for the task server at %s", F.listen, F.backend);
    struct epoll_event events[64];
    while (still_wanted()) {
        int n = epoll_wait(F.epoll, events, 64, F.nwaiting ? RETRY_INTERVAL_MS : (int)(CHECK_INTERVAL * 1000));
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (!tag) {
                accept_all();
                continue;
            }
            struct link *l = (struct link *)(uintptr_t)(tag & ~(uint64_t)1);
            if (l->esock >= 0)
                event(l, (int)(tag & 1), events[i].events);
        }
        free_dead();
        if (F.nwaiting)
            reconnect();
        if (F.released)
            unblock();
        free_dead();
    }
    say("no engine connection, and %s is gone or no task server answered for %.0f s: exiting", F.listen,
          ORPHAN_EXIT);
    return 0;
}
