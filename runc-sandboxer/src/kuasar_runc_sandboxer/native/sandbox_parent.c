/*
 * sandbox-parent: runc-sandboxer's helper that forks the tiny processes holding a pod's namespaces.
 *
 *   sandbox-parent --control FD --pause FD
 *
 * runc-sandboxer starts it with one end of a SOCK_SEQPACKET socketpair as --control and a memfd holding
 * kuasar_shared's pause program as --pause, and asks it for holders over the socket. Being a separate
 * program keeps it free of the sandboxer's state (no copy-on-write pages dirtied behind the sandboxer's
 * back, no threads when it forks), and being C keeps it and its spare holder at a few hundred kB where
 * a Python interpreter costs ~3.5 MB each.
 *
 * For each request it double-forks: the intermediate child unshares the UTS namespace, the IPC namespace
 * (unless the pod uses the node's) and the PID namespace (unless the pod uses the node's) and forks the
 * holder, which becomes PID 1 of the new PID namespace, joins the pod's network namespace (unless host
 * network), sets the pod hostname, applies the pod's sysctls (they belong to its IPC and network
 * namespaces, so only the holder can set them) and execs the pause program with SIGCHLD ignored (the
 * kernel then reaps orphans of the pod's PID namespace). Holders ignore every signal sent from outside
 * their namespace except SIGKILL. The helper is a child subreaper: holders re-parent to it and it reaps
 * them when they exit.
 *
 * A holder is made ahead of need: at start and after each answer the helper forks the next one for the
 * common case (new IPC and PID namespaces) up to the point where it waits for its request on a pipe, so a
 * pod start only hands it the request: the two forks and the unshare are off the pod's start path. A
 * spare that died (or a pod that shares the node's IPC or PID namespace) is served the old way.
 *
 * Wire format (kuasar_shared/native.py, one request at a time, one message each way): fields
 * "name=value", each ended by a NUL byte. A request is id=<sandbox id> and optionally netns=<path>,
 * hostname=<name>, host_ipc=0|1, host_pid=0|1 and sysctl=<file under /proc/sys/>=<value> (repeated); the
 * answer is pid=<holder pid in the helper's PID namespace> or error=<message naming what failed>. Holders
 * report to the helper over a pipe in the same form: pid= (the intermediate), ok=1 or error= (the holder).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "sandbox-parent"
/* the largest request or answer; the sandboxer refuses to send more */
#define MAX_MESSAGE 65536
#define MAX_SYSCTLS 1024
/* what a holder reports (pid=, ok=1, error=...) */
#define MAX_REPORT 4096
#define SYSCTL_ROOT "/proc/sys/"
/* what a spare holder is made with: the namespaces of a pod that shares none with the node */
#define SPARE_FLAGS (CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID)

struct request {
    const char *id;
    const char *netns;    /* "" when the pod uses the node's network namespace */
    const char *hostname; /* "" to leave the new UTS namespace's name as it is */
    bool host_ipc, host_pid;
    size_t sysctls;
    const char *sysctl_path[MAX_SYSCTLS];
    const char *sysctl_value[MAX_SYSCTLS];
};

/* A holder forked ahead of need, waiting for its request on a pipe; -1, -1 when there is none. The helper
 * owns the request pipe's write end and the report pipe's read end. */
struct spare {
    int request;
    int report;
};

/* Writes "name=value\0" to a pipe in one write (a long value is cut), so that the fields of the intermediate
 * child and of the holder never interleave. */
static void vreport(int fd, const char *name, const char *format, va_list args) {
    char field[MAX_REPORT / 2];
    int n = snprintf(field, sizeof field, "%s=", name);
    int m = vsnprintf(field + n, sizeof field - (size_t)n, format, args);
    size_t length = (size_t)n + (size_t)(m < 0 ? 0 : m);
    ssize_t ignored = write(fd, field, (length < sizeof field ? length : sizeof field - 1) + 1);
    (void)ignored;
}

__attribute__((format(printf, 3, 4))) static void report_field(int fd, const char *name, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vreport(fd, name, format, args);
    va_end(args);
}

/* Reports an error and exits (the intermediate child or the holder). */
__attribute__((noreturn, format(printf, 2, 3))) static void fail(int report, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vreport(report, "error", format, args);
    va_end(args);
    _exit(1);
}

/* Reads until EOF or size bytes; returns the count, or -1 with errno set. */
static ssize_t read_all(int fd, char *buffer, size_t size) {
    size_t done = 0;
    while (done < size) {
        ssize_t n = read(fd, buffer + done, size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static bool write_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return false;
        data += n;
        size -= (size_t)n;
    }
    return true;
}

/* ---- requests -------------------------------------------------------------------------------------- */

static bool set_once(const char **slot, const char *name, const char *value, char *error, size_t size) {
    if (*slot != NULL) {
        snprintf(error, size, "malformed request: field %s given twice", name);
        return false;
    }
    *slot = value;
    return true;
}

static bool parse_flag(bool *slot, const char *name, const char *value, char *error, size_t size) {
    if (strcmp(value, "0") != 0 && strcmp(value, "1") != 0) {
        snprintf(error, size, "malformed request: field %s=%.40s is not 0 or 1", name, value);
        return false;
    }
    *slot = value[0] == '1';
    return true;
}

/* The sysctl file a pod may write: under /proc/sys, with no way back up. */
static bool parse_sysctl(struct request *request, char *value, char *error, size_t size) {
    char *equals = strchr(value, '=');
    if (equals == NULL) {
        snprintf(error, size, "malformed request: field sysctl=%.60s is not <path>=<value>", value);
        return false;
    }
    *equals = '\0';
    if (strncmp(value, SYSCTL_ROOT, strlen(SYSCTL_ROOT)) != 0 || strstr(value, "/../") != NULL) {
        snprintf(error, size, "not a sysctl file: %.200s", value);
        return false;
    }
    if (request->sysctls == MAX_SYSCTLS) {
        snprintf(error, size, "malformed request: more than %d sysctl fields", MAX_SYSCTLS);
        return false;
    }
    request->sysctl_path[request->sysctls] = value;
    request->sysctl_value[request->sysctls++] = equals + 1;
    return true;
}

/* Parses data (length bytes, changed in place: the strings of request point into it). On a malformed
 * request returns false with a message naming the bad field in error. */
static bool parse_request(char *data, size_t length, struct request *request, char *error, size_t size) {
    memset(request, 0, sizeof *request);
    if (length == 0 || data[length - 1] != '\0') {
        snprintf(error, size, "malformed request: %s", length ? "the last field is not ended by a NUL byte"
                                                              : "the message is empty");
        return false;
    }
    int number = 0;
    for (char *field = data, *next; field < data + length; field = next) {
        next = field + strlen(field) + 1; /* before the '=' below is cut */
        number++;
        char *equals = strchr(field, '=');
        if (equals == NULL || equals == field) {
            snprintf(error, size, "malformed request: field %d (%.40s) is not name=value", number, field);
            return false;
        }
        *equals = '\0';
        char *value = equals + 1;
        bool ok;
        if (!strcmp(field, "id"))
            ok = set_once(&request->id, field, value, error, size);
        else if (!strcmp(field, "netns"))
            ok = set_once(&request->netns, field, value, error, size);
        else if (!strcmp(field, "hostname"))
            ok = set_once(&request->hostname, field, value, error, size);
        else if (!strcmp(field, "host_ipc"))
            ok = parse_flag(&request->host_ipc, field, value, error, size);
        else if (!strcmp(field, "host_pid"))
            ok = parse_flag(&request->host_pid, field, value, error, size);
        else if (!strcmp(field, "sysctl"))
            ok = parse_sysctl(request, value, error, size);
        else {
            snprintf(error, size, "malformed request: unknown field %.40s", field);
            ok = false;
        }
        if (!ok)
            return false;
    }
    if (request->id == NULL || request->id[0] == '\0') {
        snprintf(error, size, "malformed request: field id is missing or empty");
        return false;
    }
    if (request->netns == NULL)
        request->netns = "";
    if (request->hostname == NULL)
        request->hostname = "";
    return true;
}

static int request_flags(const struct request *request) {
    int flags = CLONE_NEWUTS;
    if (!request->host_ipc)
        flags |= CLONE_NEWIPC;
    if (!request->host_pid)
        flags |= CLONE_NEWPID;
    return flags;
}

/* ---- the holder -------------------------------------------------------------------------------------- */

/* Closes the descriptors first..last (last: ~0U for all above first). */
static void close_between(unsigned int first, unsigned int last) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, first, last, 0) == 0)
        return;
#endif
    long limit = sysconf(_SC_OPEN_MAX); /* kernels before 5.9 */
    for (long fd = first; fd <= (long)last && fd < limit; fd++)
        close((int)fd);
}

/* Closes every descriptor from 3 up but those in keep (negative entries stand for none). */
static void keep_only(int *keep, int count) {
    for (int i = 1; i < count; i++) /* insertion sort: a handful of entries */
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = t;
        }
    unsigned int first = 3;
    for (int i = 0; i < count; i++) {
        if (keep[i] < (int)first)
            continue;
        if ((unsigned int)keep[i] > first)
            close_between(first, (unsigned int)keep[i] - 1);
        first = (unsigned int)keep[i] + 1;
    }
    close_between(first, ~0U);
}

/* Body of the holder (PID 1 of the pod's PID namespace unless host PID). Never returns: execs the pause
 * program or reports an error and exits. report is close-on-exec, so the helper's read ends at the exec. */
__attribute__((noreturn)) static void holder(const struct request *request, int report, int pause) {
    if (request->netns[0]) {
        int fd = open(request->netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            fail(report, "open netns %s: %s", request->netns, strerror(errno));
        if (setns(fd, CLONE_NEWNET) != 0)
            fail(report, "setns %s: %s", request->netns, strerror(errno));
        close(fd);
    }
    if (request->hostname[0] && sethostname(request->hostname, strlen(request->hostname)) != 0)
        fail(report, "sethostname %s: %s", request->hostname, strerror(errno));
    for (size_t i = 0; i < request->sysctls; i++) {
        const char *path = request->sysctl_path[i], *value = request->sysctl_value[i];
        int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
        if (fd < 0 || !write_all(fd, value, strlen(value)))
            fail(report, "sysctl %s=%s: %s", path + strlen(SYSCTL_ROOT), value, strerror(errno));
        close(fd);
    }
    if (setsid() < 0)
        fail(report, "setsid: %s", strerror(errno));
    int null = open("/dev/null", O_RDWR);
    if (null < 0)
        fail(report, "open /dev/null: %s", strerror(errno));
    for (int target = 0; target <= 2; target++)
        if (dup2(null, target) < 0)
            fail(report, "dup2 /dev/null: %s", strerror(errno));
    if (null > 2)
        close(null);
    static const int ignored[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGCHLD};
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        signal(ignored[i], SIG_IGN);
    char program[64], name[256];
    snprintf(program, sizeof program, "/proc/self/fd/%d", pause);
    snprintf(name, sizeof name, "[sandbox-%s]", request->id);
    char *argv[] = {name, NULL};
    report_field(report, "ok", "1");
    execv(program, argv);
    fail(report, "exec the pause program: %s", strerror(errno));
}

/* Forks the intermediate child, which unshares flags and forks the holder; returns the intermediate's pid
 * (-1 with errno when fork fails). The holder runs request, or, when it is NULL (a spare), first reads it
 * from request_fd. Both write their fields to report. */
static pid_t fork_holder(int flags, int report, int pause, int request_fd, const struct request *request) {
    pid_t child = fork();
    if (child != 0)
        return child;
    signal(SIGCHLD, SIG_DFL);
    if (unshare(flags) != 0)
        fail(report, "unshare: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        fail(report, "fork the holder: %s", strerror(errno));
    if (pid > 0) {
        report_field(report, "pid", "%d", (int)pid);
        _exit(0);
    }
    int keep[] = {report, pause, request_fd};
    keep_only(keep, 3);
    struct request own;
    static char data[MAX_MESSAGE];
    if (request == NULL) {
        ssize_t n = read_all(request_fd, data, sizeof data);
        if (n == 0) /* the helper is gone, or dropped this spare */
            _exit(0);
        if (n < 0)
            fail(report, "read the request: %s", strerror(errno));
        close(request_fd);
        char error[512];
        if (!parse_request(data, (size_t)n, &own, error, sizeof error))
            fail(report, "%s", error);
        request = &own;
    }
    char name[64];
    snprintf(name, sizeof name, "sandbox-%s", request->id);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    holder(request, report, pause);
}

/* ---- the helper -------------------------------------------------------------------------------------- */

static void spare_make(struct spare *spare, int pause) {
    int request[2], report[2];
    spare->request = spare->report = -1;
    if (pipe2(request, O_CLOEXEC) != 0)
        return;
    if (pipe2(report, O_CLOEXEC) != 0) {
        close(request[0]);
        close(request[1]);
        return;
    }
    pid_t pid = fork_holder(SPARE_FLAGS, report[1], pause, request[0], NULL);
    close(request[0]);
    close(report[1]);
    if (pid < 0) { /* out of processes: the next pod is made the old way */
        close(request[1]);
        close(report[0]);
        return;
    }
    spare->request = request[1];
    spare->report = report[0];
}

static void spare_drop(struct spare *spare) {
    if (spare->request >= 0) {
        close(spare->request);
        close(spare->report);
    }
    spare->request = spare->report = -1;
}

/* Hands the spare its request and reads its fields into out; returns their length, 0 when the spare
 * was already dead. The spare is used up either way. */
static size_t spare_use(struct spare *spare, const char *raw, size_t length, char *out, size_t size) {
    ssize_t n = 0;
    if (write_all(spare->request, raw, length)) {
        close(spare->request);
        spare->request = -1;
        n = read_all(spare->report, out, size);
    }
    spare_drop(spare);
    return n > 0 ? (size_t)n : 0;
}

/* Reads the fields a holder and its intermediate reported into *pid / ok / error. */
static void read_report(char *data, size_t length, long *pid, bool *ok, const char **error) {
    *pid = 0;
    *ok = false;
    *error = NULL;
    for (char *field = data; field < data + length; field += strlen(field) + 1) {
        if (!strncmp(field, "pid=", 4))
            *pid = strtol(field + 4, NULL, 10);
        else if (!strcmp(field, "ok=1"))
            *ok = true;
        else if (!strncmp(field, "error=", 6) && *error == NULL)
            *error = field + 6;
    }
}

/* Makes one holder for request (from the spare when it fits, else with a fresh double fork) and writes
 * the answer field into answer. */
static void spawn(const struct request *request, const char *raw, size_t length, int pause, struct spare *spare,
                  char *answer, size_t size) {
    char data[MAX_REPORT + 1];
    size_t n = 0;
    long pid;
    bool ok;
    const char *error;
    if (spare->request >= 0 && request_flags(request) == SPARE_FLAGS) {
        n = spare_use(spare, raw, length, data, MAX_REPORT);
        data[n] = '\0';
        read_report(data, n, &pid, &ok, &error);
        if (error == NULL && !ok) /* died before or while reading its request: made the old way */
            n = 0;
    } else {
        spare_drop(spare);
    }
    if (n == 0) {
        int report[2];
        if (pipe2(report, O_CLOEXEC) != 0) {
            snprintf(answer, size, "error=pipe: %s", strerror(errno));
            return;
        }
        pid_t child = fork_holder(request_flags(request), report[1], pause, -1, request);
        int saved = errno;
        close(report[1]);
        if (child < 0) {
            close(report[0]);
            snprintf(answer, size, "error=fork: %s", strerror(saved));
            return;
        }
        ssize_t got = read_all(report[0], data, MAX_REPORT);
        close(report[0]);
        n = got > 0 ? (size_t)got : 0;
        data[n] = '\0';
        read_report(data, n, &pid, &ok, &error);
    }
    /* a holder that reported an error has exited (nothing to kill: its pid may be reused already) */
    if (error != NULL || pid <= 0 || !ok) {
        snprintf(answer, size, "error=%s", error != NULL ? error : "namespace holder died during set-up");
        return;
    }
    snprintf(answer, size, "pid=%ld", pid);
}

static void reap_all(int signum) {
    (void)signum;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

/* The main loop; returns when the sandboxer closes its end. */
static int serve(int control, int pause) {
    static char message[MAX_MESSAGE], raw[MAX_MESSAGE];
    char answer[MAX_REPORT + 64];
    struct request request;
    struct spare spare;
    spare_make(&spare, pause);
    for (;;) {
        ssize_t n = recv(control, message, sizeof message, MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            dprintf(2, NAME ": read a request: %s\n", strerror(errno));
            break;
        }
        if (n == 0) /* the sandboxer closed its end (it never sends an empty message) */
            break;
        char error[512];
        if ((size_t)n > sizeof message) {
            snprintf(answer, sizeof answer, "error=malformed request: %zd bytes, more than %d", n, MAX_MESSAGE);
        } else {
            memcpy(raw, message, (size_t)n);
            if (parse_request(message, (size_t)n, &request, error, sizeof error))
                spawn(&request, raw, (size_t)n, pause, &spare, answer, sizeof answer);
            else
                snprintf(answer, sizeof answer, "error=%s", error);
        }
        if (send(control, answer, strlen(answer) + 1, MSG_NOSIGNAL) < 0) {
            dprintf(2, NAME ": answer a request: %s\n", strerror(errno));
            break;
        }
        if (spare.request < 0)
            spare_make(&spare, pause);
    }
    spare_drop(&spare);
    return 0;
}

static bool parse_fd(const char *text, int *fd) {
    char *end = NULL;
    errno = 0;
    long value = text ? strtol(text, &end, 10) : -1;
    if (text == NULL || errno || end == text || *end || value < 0 || value > 65535)
        return false;
    *fd = (int)value;
    return true;
}

int main(int argc, char **argv) {
    const char *control_arg = NULL, *pause_arg = NULL;
    bool known = argc == 5;
    for (int i = 1; known && i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--control"))
            control_arg = argv[i + 1];
        else if (!strcmp(argv[i], "--pause"))
            pause_arg = argv[i + 1];
        else
            known = false;
    }
    int control = -1, pause = -1, type = 0;
    socklen_t type_size = sizeof type;
    if (!known || !parse_fd(control_arg, &control) || !parse_fd(pause_arg, &pause)) {
        dprintf(2, NAME ": usage: " NAME " --control FD --pause FD (FD: open descriptors' numbers)\n");
        return 2;
    }
    if (getsockopt(control, SOL_SOCKET, SO_TYPE, &type, &type_size) != 0 || type != SOCK_SEQPACKET) {
        dprintf(2, NAME ": --control %d: %s\n", control, type ? "not a SOCK_SEQPACKET socket" : strerror(errno));
        return 2;
    }
    if (fcntl(pause, F_GETFD) < 0) {
        dprintf(2, NAME ": --pause %d: %s\n", pause, strerror(errno));
        return 2;
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_IGN); /* a dead spare's pipe fails with EPIPE */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    prctl(PR_SET_NAME, NAME, 0, 0, 0);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        dprintf(2, NAME ": prctl(PR_SET_CHILD_SUBREAPER): %s\n", strerror(errno));
        return 1;
    }
    struct sigaction reaper;
    memset(&reaper, 0, sizeof reaper);
    reaper.sa_handler = reap_all;
    reaper.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&reaper.sa_mask);
    sigaction(SIGCHLD, &reaper, NULL);
    return serve(control, pause);
}
