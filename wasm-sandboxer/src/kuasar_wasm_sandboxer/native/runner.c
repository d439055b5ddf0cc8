/*
 * wasm-forkserver: the fork-server and the runners of wasm containers, a program with no Python in it.
 *
 *   wasm-forkserver --control FD --wasmtime LIBRARY
 *
 * wasm-task starts it with one end of a SOCK_SEQPACKET socketpair as FD. It opens wasmtime's C API from
 * LIBRARY (the wasmtime wheel's own _libwasmtime.so), builds the engine and the WASI linker, and forks one
 * runner per request. A runner forked from a Python process would write the refcounts of every object it
 * touches, copying those pages (~2 MB per container), and even one that runs only C would copy the pages
 * of the interpreter's heap that malloc writes into; a runner of this program copies little more than its
 * own stack, heap and the module's linear memory.
 *
 * The wheel ships no headers: the few types used are declared below as wasmtime 50's headers lay them out
 * (opaque pointers, and the by-value wasmtime_func_t, wasmtime_instance_t and wasmtime_extern_t), and the
 * functions are resolved with dlsym.
 *
 * The wire format of both the control messages and the run-spec file is a sequence of fields
 * "name=value", each ended by a NUL byte (see kuasar_wasm_sandboxer/protocol.py, the Python side).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- wasmtime C API (wasmtime 50), resolved at run time ---------------------------------------- */

typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasmtime_error wasmtime_error_t;
typedef struct wasmtime_module wasmtime_module_t;
typedef struct wasmtime_linker wasmtime_linker_t;
typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasi_config_t wasi_config_t;

typedef struct {
    size_t size;
    char *data;
} wasm_byte_vec_t;

typedef struct {
    uint64_t store_id;
    void *private_;
} wasmtime_func_t;

typedef struct {
    uint64_t store_id;
    size_t private_;
} wasmtime_instance_t;

/* kind, then a union of func/global/table/memory/sharedmemory/tag; the largest (global) is 24 bytes */
typedef struct {
    uint8_t kind;
    union {
        wasmtime_func_t func;
        uint64_t words[3];
    } of;
} wasmtime_extern_t;

_Static_assert(sizeof(wasmtime_extern_t) == 32, "wasmtime_extern_t is 32 bytes in wasmtime 50");
_Static_assert(sizeof(wasmtime_func_t) == 16, "wasmtime_func_t is 16 bytes in wasmtime 50");

#define WASMTIME_EXTERN_FUNC 0

#define WASMTIME_API(X)                                                                                  \
    X(wasm_engine_t *, wasm_engine_new, (void))                                                          \
    X(wasmtime_linker_t *, wasmtime_linker_new, (wasm_engine_t *))                                       \
    X(wasmtime_error_t *, wasmtime_linker_define_wasi, (wasmtime_linker_t *))                            \
    X(wasmtime_error_t *, wasmtime_module_new, (wasm_engine_t *, const uint8_t *, size_t,                \
                                                wasmtime_module_t **))                                   \
    X(wasmtime_error_t *, wasmtime_module_deserialize_file, (wasm_engine_t *, const char *,              \
                                                             wasmtime_module_t **))                      \
    X(wasmtime_error_t *, wasmtime_module_serialize, (wasmtime_module_t *, wasm_byte_vec_t *))           \
    X(void, wasmtime_module_delete, (wasmtime_module_t *))                                               \
    X(wasmtime_error_t *, wasmtime_wat2wasm, (const char *, size_t, wasm_byte_vec_t *))                  \
    X(void, wasm_byte_vec_delete, (wasm_byte_vec_t *))                                                   \
    X(wasmtime_store_t *, wasmtime_store_new, (wasm_engine_t *, void *, void (*)(void *)))               \
    X(wasmtime_context_t *, wasmtime_store_context, (wasmtime_store_t *))                                \
    X(void, wasmtime_store_limiter, (wasmtime_store_t *, int64_t, int64_t, int64_t, int64_t, int64_t))   \
    X(wasi_config_t *, wasi_config_new, (void))                                                          \
    X(bool, wasi_config_set_argv, (wasi_config_t *, size_t, const char **))                              \
    X(bool, wasi_config_set_env, (wasi_config_t *, size_t, const char **, const char **))                \
    X(void, wasi_config_inherit_stdin, (wasi_config_t *))                                                \
    X(void, wasi_config_inherit_stdout, (wasi_config_t *))                                               \
    X(void, wasi_config_inherit_stderr, (wasi_config_t *))                                               \
    X(bool, wasi_config_preopen_dir, (wasi_config_t *, const char *, const char *, bool))                \
    X(wasmtime_error_t *, wasmtime_context_set_wasi, (wasmtime_context_t *, wasi_config_t *))            \
    X(wasmtime_error_t *, wasmtime_linker_instantiate, (const wasmtime_linker_t *, wasmtime_context_t *, \
                                                        const wasmtime_module_t *, wasmtime_instance_t *, \
                                                        wasm_trap_t **))                                 \
    X(bool, wasmtime_instance_export_get, (wasmtime_context_t *, const wasmtime_instance_t *,            \
                                           const char *, size_t, wasmtime_extern_t *))                   \
    X(wasmtime_error_t *, wasmtime_func_call, (wasmtime_context_t *, const wasmtime_func_t *,            \
                                               const void *, size_t, void *, size_t, wasm_trap_t **))    \
    X(bool, wasmtime_error_exit_status, (const wasmtime_error_t *, int *))                               \
    X(void, wasmtime_error_message, (const wasmtime_error_t *, wasm_byte_vec_t *))                       \
    X(void, wasmtime_error_delete, (wasmtime_error_t *))                                                 \
    X(void, wasm_trap_message, (const wasm_trap_t *, wasm_byte_vec_t *))                                 \
    X(void, wasm_trap_delete, (wasm_trap_t *))

#define DECLARE(ret, name, args) ret(*name) args;
static struct {
    WASMTIME_API(DECLARE)
} api;
#undef DECLARE

/* ---- limits and names ----------------------------------------------------------------------------- */

#define MAX_MESSAGE 65536           /* a control message (protocol.MAX_MESSAGE) */
#define MAX_SPEC (8 << 20)          /* a run-spec file: argv + env are at most 1 MiB, plus paths */
#define MAX_WARNINGS 10
#define MAX_TEXT 1000               /* one warning or error in a reply */
#define HEADROOM (4 << 20)          /* bytes kept below the container limit for the runner itself */
#define TRAP_EXIT 134               /* 128 + SIGABRT, as the wasmtime CLI */
#define STDIO_COUNT 3

static const char *const STDIO_NAMES[STDIO_COUNT] = {"stdin", "stdout", "stderr"};

/* ---- small helpers -------------------------------------------------------------------------------- */

/* A line on stderr: the task server's log (fd 2 of the fork-server, and of a runner until start). */
static void log_line(const char *format, ...) {
    char line[1200];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line - 1, format, args);
    va_end(args);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    if (write(2, line, (size_t)n) < 0)
        return;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Text of a byte vector wasmtime returned (freed), trailing NULs and whitespace stripped. */
static void take_text(wasm_byte_vec_t *vec, char *out, size_t size) {
    size_t n = vec->size;
    while (n > 0 && (vec->data[n - 1] == '\0' || vec->data[n - 1] == ' ' || vec->data[n - 1] == '\n'))
        n--;
    size_t start = 0;
    while (start < n && (vec->data[start] == ' ' || vec->data[start] == '\n'))
        start++;
    n -= start;
    if (n >= size)
        n = size - 1;
    memcpy(out, vec->data + start, n);
    out[n] = '\0';
    api.wasm_byte_vec_delete(vec);
}

/* The message of an error (deleted). */
static void error_text(wasmtime_error_t *error, char *out, size_t size) {
    wasm_byte_vec_t vec = {0, NULL};
    api.wasmtime_error_message(error, &vec);
    take_text(&vec, out, size);
    api.wasmtime_error_delete(error);
}

/* The message of a trap (deleted). */
static void trap_text(wasm_trap_t *trap, char *out, size_t size) {
    wasm_byte_vec_t vec = {0, NULL};
    api.wasm_trap_message(trap, &vec);
    take_text(&vec, out, size);
    api.wasm_trap_delete(trap);
}

/* The first three lines of a message, joined by spaces (in place). */
static void first_lines(char *text) {
    int lines = 1;
    for (char *c = text; *c; c++) {
        if (*c == '\n') {
            if (++lines > 3) {
                *c = '\0';
                break;
            }
            *c = ' ';
        }
    }
}

static int write_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        size -= (size_t)n;
    }
    return 0;
}

/* The whole regular file at `path` (malloc'd, NUL-terminated), or NULL with errno set. */
static char *read_file(const char *path, size_t limit, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    int fault = fstat(fd, &st) < 0 ? errno : !S_ISREG(st.st_mode) ? EINVAL : (size_t)st.st_size > limit ? EFBIG : 0;
    char *data = fault ? NULL : malloc((size_t)st.st_size + 1);
    if (!fault && data == NULL)
        fault = ENOMEM;
    size_t done = 0;
    while (!fault && done < (size_t)st.st_size) {
        ssize_t n = read(fd, data + done, (size_t)st.st_size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fault = n < 0 ? errno : EIO;
        else
            done += (size_t)n;
    }
    close(fd);
    if (fault) {
        free(data);
        errno = fault;
        return NULL;
    }
    data[done] = '\0';
    *size = done;
    return data;
}

/* ---- fields: "name=value\0" ... ------------------------------------------------------------------ */

typedef struct {
    const char *name;  /* NUL-terminated (the '=' is replaced) */
    const char *value; /* NUL-terminated */
} field_t;

/*
 * Split `data` (modified in place) into fields; returns how many, or -1 with `why` naming the fault.
 * `fields` may be NULL to count only.
 */
static long parse_fields(char *data, size_t size, field_t *fields, size_t capacity, char *why, size_t why_size) {
    if (size == 0 || data[size - 1] != '\0') {
        snprintf(why, why_size, "%s", size == 0 ? "it is empty" : "its last field is not ended by a NUL byte");
        return -1;
    }
    long count = 0;
    for (size_t at = 0; at < size;) {
        char *field = data + at;
        size_t length = strlen(field);
        char *equals = strchr(field, '=');
        if (equals == NULL || equals == field) {
            snprintf(why, why_size, "field %ld (%.40s) is not name=value", count + 1, field);
            return -1;
        }
        if (fields != NULL) {
            if ((size_t)count >= capacity) {
                snprintf(why, why_size, "more than %zu fields", capacity);
                return -1;
            }
            *equals = '\0';
            fields[count].name = field;
            fields[count].value = equals + 1;
        }
        count++;
        at += length + 1;
    }
    return count;
}

/* A message being built: fields appended, truncated values never split a field. */
typedef struct {
    char data[MAX_MESSAGE];
    size_t size;
} message_t;

static void add_field(message_t *m, const char *name, const char *format, ...) {
    char value[MAX_TEXT + 1];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(value, sizeof value, format, args);
    va_end(args);
    if (n < 0)
        return;
    size_t need = strlen(name) + 1 + strlen(value) + 1;
    if (m->size + need > sizeof m->data)
        return;
    m->size += (size_t)sprintf(m->data + m->size, "%s=%s", name, value) + 1;
}

/* ---- the run spec ---------------------------------------------------------------------------------- */

typedef struct {
    const char *host;
    const char *guest;
    bool readonly;
} preopen_t;

typedef struct {
    char *data; /* the file, which the strings below point into */
    field_t *fields;
    const char *name, *module, *kind, *cache_entry, *cache_store;
    const char **argv;
    size_t argc;
    const char **env_names, **env_values;
    size_t envc;
    preopen_t *preopens;
    size_t preopen_count;
    long long memory_limit;
} spec_t;

/* Read the spec file written by RunSpec.save; -1 with `why` set when it is unreadable or malformed. */
static int load_spec(const char *path, spec_t *s, char *why, size_t why_size) {
    char fault[200];
    size_t size = 0;
    memset(s, 0, sizeof *s);
    s->cache_entry = s->cache_store = "";
    s->data = read_file(path, MAX_SPEC, &size);
    if (s->data == NULL) {
        snprintf(why, why_size, "cannot read run spec %s: %s", path, strerror(errno));
        return -1;
    }
    long count = parse_fields(s->data, size, NULL, 0, fault, sizeof fault);
    if (count >= 0) {
        s->fields = calloc((size_t)count, sizeof *s->fields);
        s->argv = calloc((size_t)count + 1, sizeof *s->argv);
        s->env_names = calloc((size_t)count + 1, sizeof *s->env_names);
        s->env_values = calloc((size_t)count + 1, sizeof *s->env_values);
        s->preopens = calloc((size_t)count + 1, sizeof *s->preopens);
        if (!s->fields || !s->argv || !s->env_names || !s->env_values || !s->preopens) {
            snprintf(why, why_size, "out of memory reading run spec %s", path);
            return -1;
        }
        count = parse_fields(s->data, size, s->fields, (size_t)count, fault, sizeof fault);
    }
    for (long i = 0; i < count; i++) {
        const char *name = s->fields[i].name, *value = s->fields[i].value;
        preopen_t *last = s->preopen_count ? &s->preopens[s->preopen_count - 1] : NULL;
        if (!strcmp(name, "name")) {
            s->name = value;
        } else if (!strcmp(name, "module")) {
            s->module = value;
        } else if (!strcmp(name, "kind")) {
            s->kind = value;
        } else if (!strcmp(name, "arg")) {
            s->argv[s->argc++] = value;
        } else if (!strcmp(name, "env")) {
            char *equals = strchr(value, '=');
            if (equals == NULL || equals == value) {
                snprintf(fault, sizeof fault, "env field %.40s is not KEY=VALUE", value);
                count = -1;
                break;
            }
            *equals = '\0';
            s->env_names[s->envc] = value;
            s->env_values[s->envc++] = equals + 1;
        } else if (!strcmp(name, "preopen")) {
            if (strcmp(value, "ro") && strcmp(value, "rw")) {
                snprintf(fault, sizeof fault, "preopen is %.20s, not ro or rw", value);
                count = -1;
                break;
            }
            s->preopens[s->preopen_count++].readonly = !strcmp(value, "ro");
        } else if (!strcmp(name, "host") || !strcmp(name, "guest")) {
            if (last == NULL || (name[0] == 'h' ? last->host : last->guest) != NULL) {
                snprintf(fault, sizeof fault, "field %s does not follow a preopen field", name);
                count = -1;
                break;
            }
            *(name[0] == 'h' ? &last->host : &last->guest) = value;
        } else if (!strcmp(name, "memory_limit")) {
            char *end = NULL;
            errno = 0;
            s->memory_limit = strtoll(value, &end, 10);
            if (errno || end == value || *end || s->memory_limit < 0) {
                snprintf(fault, sizeof fault, "memory_limit %.30s is not a byte count", value);
                count = -1;
                break;
            }
        } else if (!strcmp(name, "cache_entry")) {
            s->cache_entry = value;
        } else if (!strcmp(name, "cache_store")) {
            s->cache_store = value;
        } else {
            snprintf(fault, sizeof fault, "unknown field %.40s", name);
            count = -1;
            break;
        }
    }
    if (count >= 0) {
        const char *missing = !s->name ? "name" : !s->module ? "module" : !s->kind ? "kind" : !s->argc ? "arg" : NULL;
        for (size_t i = 0; missing == NULL && i < s->preopen_count; i++)
            if (!s->preopens[i].host || !s->preopens[i].guest)
                missing = "host or guest of a preopen";
        if (missing != NULL) {
            snprintf(fault, sizeof fault, "no %s field", missing);
            count = -1;
        } else if (strcmp(s->kind, "wasm") && strcmp(s->kind, "wat")) {
            snprintf(fault, sizeof fault, "kind is %.20s, not wasm or wat", s->kind);
            count = -1;
        }
    }
    if (count < 0) {
        snprintf(why, why_size, "%s holds no run spec: %s", path, fault);
        return -1;
    }
    return 0;
}

/* ---- one runner ------------------------------------------------------------------------------------ */

typedef struct {
    wasm_engine_t *engine;
    const wasmtime_linker_t *linker;
    int control;
    char error[MAX_TEXT + 1];
    char warnings[MAX_WARNINGS][MAX_TEXT + 1];
    size_t warning_count;
    bool compiled, stored;
    wasmtime_context_t *context;
    wasmtime_func_t start;
    const char *name;
} runner_t;

static void warn(runner_t *r, const char *format, ...) {
    if (r->warning_count >= MAX_WARNINGS)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(r->warnings[r->warning_count++], MAX_TEXT + 1, format, args);
    va_end(args);
}

static int fail(runner_t *r, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(r->error, sizeof r->error, format, args);
    va_end(args);
    return -1;
}

static long long read_number(const char *path) {
    long long value = -1;
    FILE *f = fopen(path, "re");
    if (f != NULL) {
        if (fscanf(f, "%lld", &value) != 1)
            value = -1;
        fclose(f);
    }
    return value;
}

/* Bytes this process's memory cgroup is charged (v2 memory.current, v1 memory.usage_in_bytes), or -1. */
static long long cgroup_charge(void) {
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (f == NULL)
        return -1;
    char line[4096], usage[4200];
    long long charge = -1;
    while (charge < 0 && fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *controllers = strchr(line, ':');
        char *path = controllers ? strchr(controllers + 1, ':') : NULL;
        if (path == NULL)
            continue;
        *path++ = '\0';
        controllers++;
        while (*path == '/')
            path++;
        bool memory = false;
        char *next = NULL;
        for (char *c = strtok_r(controllers, ",", &next); c != NULL; c = strtok_r(NULL, ",", &next))
            memory |= !strcmp(c, "memory");
        if (*controllers == '\0')
            snprintf(usage, sizeof usage, "/sys/fs/cgroup/%s/memory.current", path);
        else if (memory)
            snprintf(usage, sizeof usage, "/sys/fs/cgroup/memory/%s/memory.usage_in_bytes", path);
        else
            continue;
        charge = read_number(usage);
    }
    fclose(f);
    return charge;
}

static long long resident_bytes(void) {
    long long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%lld %lld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

/*
 * What already counts against the container's limit: the cgroup's own charge (a forked runner's resident
 * set is mostly pages shared with the fork-server, charged to the fork-server's cgroup), the resident set
 * when smaller (a runner outside any container cgroup sits in the task server's).
 */
static long long used_bytes(void) {
    long long charged = cgroup_charge(), resident = resident_bytes();
    return charged < 0 || resident < charged ? resident : charged;
}

/* Compiled code written to the cache_store file and mapped from it, so even the runner that compiled
 * shares its code with the next ones; the task server makes the file a cache entry (stored=1). */
static wasmtime_module_t *store_and_map(runner_t *r, const spec_t *s, wasmtime_module_t *module) {
    wasm_byte_vec_t code = {0, NULL};
    char text[MAX_TEXT];
    wasmtime_error_t *error = api.wasmtime_module_serialize(module, &code);
    if (error != NULL) {
        error_text(error, text, sizeof text);
        warn(r, "%s: cannot serialize the compiled module: %s", s->name, text);
        return module;
    }
    int fd = open(s->cache_store, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int failed = fd < 0 || write_all(fd, code.data, code.size) < 0;
    int saved = errno;
    if (fd >= 0 && close(fd) < 0 && !failed) {
        failed = 1;
        saved = errno;
    }
    api.wasm_byte_vec_delete(&code);
    if (failed) {
        warn(r, "cannot write compiled-module cache entry %s: %s", s->cache_store, strerror(saved));
        unlink(s->cache_store);
        return module;
    }
    wasmtime_module_t *mapped = NULL;
    error = api.wasmtime_module_deserialize_file(r->engine, s->cache_store, &mapped);
    if (error != NULL) {
        error_text(error, text, sizeof text);
        warn(r, "%s: cached code rejected (%s); running the compiled module", s->name, text);
        unlink(s->cache_store);
        return module;
    }
    api.wasmtime_module_delete(module);
    r->stored = true;
    return mapped;
}

/* The compiled module: mapped from the cache entry the task server verified, else compiled. */
static wasmtime_module_t *load_module(runner_t *r, const spec_t *s) {
    wasmtime_module_t *module = NULL;
    char text[MAX_TEXT];
    if (*s->cache_entry) {
        wasmtime_error_t *error = api.wasmtime_module_deserialize_file(r->engine, s->cache_entry, &module);
        if (error == NULL)
            return module;
        error_text(error, text, sizeof text);
        warn(r, "%s: cached code rejected (%s); recompiling", s->name, text);
    }
    size_t size = 0;
    char *data = read_file(s->module, (size_t)1 << 31, &size);
    if (data == NULL) {
        fail(r, "cannot read %s: %s", s->argv[0], strerror(errno));
        return NULL;
    }
    wasm_byte_vec_t wasm = {size, data};
    wasmtime_error_t *error = NULL;
    bool converted = !strcmp(s->kind, "wat");
    if (converted)
        error = api.wasmtime_wat2wasm(data, size, &wasm);
    if (error == NULL)
        error = api.wasmtime_module_new(r->engine, (const uint8_t *)wasm.data, wasm.size, &module);
    if (converted && wasm.data != data)
        api.wasm_byte_vec_delete(&wasm);
    free(data);
    if (error != NULL) {
        error_text(error, text, sizeof text);
        first_lines(text);
        fail(r, "%s is not a valid WebAssembly module: %s", s->argv[0], text);
        return NULL;
    }
    r->compiled = true;
    return *s->cache_store ? store_and_map(r, s, module) : module;
}

/* Load, link WASI (argv, env, preopens, inherited stdio), limit memory and instantiate. */
static int prepare(runner_t *r, const spec_t *s) {
    char text[MAX_TEXT];
    r->name = s->name;
    wasmtime_module_t *module = load_module(r, s);
    if (module == NULL)
        return -1;
    wasi_config_t *wasi = api.wasi_config_new();
    if (!api.wasi_config_set_argv(wasi, s->argc, s->argv) ||
        !api.wasi_config_set_env(wasi, s->envc, s->env_names, s->env_values))
        return fail(r, "%s: argv or env is not valid UTF-8", s->name);
    api.wasi_config_inherit_stdin(wasi);
    api.wasi_config_inherit_stdout(wasi);
    api.wasi_config_inherit_stderr(wasi);
    for (size_t i = 0; i < s->preopen_count; i++) {
        const preopen_t *p = &s->preopens[i];
        if (!api.wasi_config_preopen_dir(wasi, p->host, p->guest, !p->readonly))
            return fail(r, "cannot preopen %s as %s: failed to add preopen dir", p->host, p->guest);
    }
    wasmtime_store_t *store = api.wasmtime_store_new(r->engine, NULL, NULL);
    r->context = api.wasmtime_store_context(store);
    wasmtime_error_t *error = api.wasmtime_context_set_wasi(r->context, wasi);
    if (error != NULL) {
        error_text(error, text, sizeof text);
        return fail(r, "%s: cannot set up WASI: %s", s->name, text);
    }
    if (s->memory_limit > 0) {
        long long page = sysconf(_SC_PAGESIZE), limit = s->memory_limit - used_bytes() - HEADROOM;
        api.wasmtime_store_limiter(store, limit > page ? limit : page, -1, -1, -1, -1);
    }
    wasmtime_instance_t instance;
    wasm_trap_t *trap = NULL;
    error = api.wasmtime_linker_instantiate(r->linker, r->context, module, &instance, &trap);
    if (error != NULL || trap != NULL) {
        if (error != NULL)
            error_text(error, text, sizeof text);
        else
            trap_text(trap, text, sizeof text);
        first_lines(text);
        return fail(r, "cannot instantiate %s: %s", s->argv[0], text);
    }
    wasmtime_extern_t item;
    if (!api.wasmtime_instance_export_get(r->context, &instance, "_start", 6, &item) ||
        item.kind != WASMTIME_EXTERN_FUNC)
        return fail(r, "%s exports no _start function (not a WASI command module)", s->argv[0]);
    r->start = item.of.func;
    return 0;
}

/* Call _start: 0 when it returns, the proc_exit code, or TRAP_EXIT (message on the module's stderr). */
static int run_start(runner_t *r) {
    char text[8192];
    wasm_trap_t *trap = NULL;
    wasmtime_error_t *error = api.wasmtime_func_call(r->context, &r->start, NULL, 0, NULL, 0, &trap);
    if (error != NULL) {
        int status = 0;
        if (api.wasmtime_error_exit_status(error, &status)) {
            api.wasmtime_error_delete(error);
            return status;
        }
        error_text(error, text, sizeof text);
        log_line("wasm error in %s: %s", r->name, text);
        return TRAP_EXIT;
    }
    if (trap != NULL) {
        trap_text(trap, text, sizeof text);
        log_line("wasm trap in %s: %s", r->name, text);
        return TRAP_EXIT;
    }
    return 0;
}

static int send_message(int fd, const message_t *m) {
    return send(fd, m->data, m->size, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* The stdio named in "start=stdout,stderr" on fds 0/1/2 (/dev/null for the ones not sent). */
static int install_stdio(const char *names, const int *fds, size_t count, char *why, size_t why_size) {
    int targets[STDIO_COUNT] = {-1, -1, -1};
    size_t seen = 0;
    char list[64];
    snprintf(list, sizeof list, "%s", names);
    for (char *name = strtok(list, ","); name != NULL; name = strtok(NULL, ","), seen++) {
        size_t which = 0;
        while (which < STDIO_COUNT && strcmp(name, STDIO_NAMES[which]))
            which++;
        if (which == STDIO_COUNT || seen >= count || targets[which] >= 0) {
            snprintf(why, why_size, "start names %.40s for %zu fds", names, count);
            return -1;
        }
        targets[which] = fds[seen];
    }
    if (seen != count) {
        snprintf(why, why_size, "start names %.40s for %zu fds", names, count);
        return -1;
    }
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int target = 0; target < STDIO_COUNT; target++) {
        int source = targets[target] >= 0 ? targets[target] : null;
        if (source >= 0 && dup2(source, target) < 0) {
            snprintf(why, why_size, "cannot install %s: %s", STDIO_NAMES[target], strerror(errno));
            return -1;
        }
    }
    if (null > 2)
        close(null);
    for (size_t i = 0; i < count; i++)
        if (fds[i] > 2)
            close(fds[i]);
    return 0;
}

/* Receive one message with up to `max_fds` fds; returns its size (0: closed, -1: error). */
static ssize_t receive(int fd, char *data, size_t size, int *fds, size_t max_fds, size_t *fd_count) {
    char control[CMSG_SPACE(sizeof(int) * STDIO_COUNT)];
    struct iovec iov = {data, size};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * max_fds);
    ssize_t n;
    do
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    *fd_count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); n >= 0 && c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int received;
            memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd_count < max_fds)
                fds[(*fd_count)++] = received;
            else
                close(received);
        }
    }
    return n;
}

/*
 * The conversation with the task server on `control`, then the module; returns the exit status.
 *   runner -> server  pid=<pid>
 *   server -> runner  spec=<run spec path>
 *   runner -> server  ready=1 compiled=0|1 stored=0|1 load_ms=<ms> warning=... | error=<message> warning=...
 *   server -> runner  start=<stdio names, comma-separated> + those fds (SCM_RIGHTS)
 * A socket that closes before start ends the runner quietly (status 0). On start the runner removes its
 * run spec before the module runs (see protocol.py).
 */
static int run_runner(runner_t *r) {
    static char data[MAX_MESSAGE];
    static message_t reply;
    char why[1400];
    field_t fields[8];
    reply.size = 0;
    add_field(&reply, "pid", "%d", (int)getpid());
    if (send_message(r->control, &reply) < 0)
        return 0;
    int fds[STDIO_COUNT];
    size_t fd_count = 0;
    ssize_t n = receive(r->control, data, sizeof data, fds, 0, &fd_count);
    if (n <= 0)
        return 0;
    double started = now_ms();
    long count = parse_fields(data, (size_t)n, fields, 8, why, sizeof why);
    spec_t spec;
    static char spec_path[1024];
    int prepared;
    if (count != 1 || strcmp(fields[0].name, "spec")) {
        if (count >= 0)
            snprintf(why, sizeof why, "expected one field spec=<path>, got %ld field(s), the first %.40s", count,
                     fields[0].name);
        prepared = fail(r, "malformed control message: %s", why);
    } else if (strlen(fields[0].value) >= sizeof spec_path) {
        prepared = fail(r, "malformed control message: the spec path is longer than %zu bytes",
                        sizeof spec_path - 1);
    } else {
        strcpy(spec_path, fields[0].value);
        prepared = load_spec(spec_path, &spec, why, sizeof why) < 0 ? fail(r, "%s", why) : prepare(r, &spec);
    }
    reply.size = 0;
    if (prepared < 0) {
        add_field(&reply, "error", "%s", r->error);
    } else {
        add_field(&reply, "ready", "1");
        add_field(&reply, "compiled", "%d", r->compiled);
        add_field(&reply, "stored", "%d", r->stored);
        add_field(&reply, "load_ms", "%.2f", now_ms() - started);
    }
    for (size_t i = 0; i < r->warning_count; i++)
        add_field(&reply, "warning", "%s", r->warnings[i]);
    if (send_message(r->control, &reply) < 0 || prepared < 0)
        return prepared < 0 ? 1 : 0;
    n = receive(r->control, data, sizeof data, fds, STDIO_COUNT, &fd_count);
    close(r->control);
    if (n <= 0) {
        for (size_t i = 0; i < fd_count; i++)
            close(fds[i]);
        return 0;
    }
    count = parse_fields(data, (size_t)n, fields, 8, why, sizeof why);
    bool is_start = count == 1 && strcmp(fields[0].name, "start") == 0;
    if (count >= 0 && !is_start)
        snprintf(why, sizeof why, "expected one field start=<names>");
    /* the trace of this start that a restarted task server reads (WasmTaskBackend._was_started): a runner
     * that cannot remove its spec does not run */
    if (is_start && unlink(spec_path) < 0) {
        log_line("wasm runner %d (%s): cannot remove run spec %s: %s", (int)getpid(), r->name, spec_path,
                 strerror(errno));
    } else {
        if (is_start && install_stdio(fields[0].value, fds, fd_count, why, sizeof why) == 0)
            return run_start(r);
        log_line("wasm runner %d (%s): malformed start message: %s", (int)getpid(), r->name, why);
    }
    for (size_t i = 0; i < fd_count; i++)
        if (fds[i] > 2)
            close(fds[i]);
    return 1;
}

/* ---- the fork-server ------------------------------------------------------------------------------ */

static int load_api(const char *library, char *why, size_t why_size) {
    void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        snprintf(why, why_size, "cannot load the wasmtime library: %s", dlerror());
        return -1;
    }
#define RESOLVE(ret, name, args)                                                                       \
    *(void **)&api.name = dlsym(handle, #name);                                                        \
    if (api.name == NULL) {                                                                            \
        snprintf(why, why_size, "%s has no %s (not wasmtime 50's C API)", library, #name);             \
        return -1;                                                                                     \
    }
    WASMTIME_API(RESOLVE)
#undef RESOLVE
    return 0;
}

/* In the intermediate child: a session of its own, fork the runner, exit (the runner re-parents to the
 * task server, the nearest child subreaper). Never returns. */
static void fork_runner(int control, runner_t *r) {
    if (setsid() < 0)
        log_line("fork-server: setsid: %s", strerror(errno));
    close(control);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_NAME, "wasm-runner", 0, 0, 0);
        _exit(run_runner(r));
    }
    if (pid < 0)
        log_line("fork-server: cannot fork a runner: %s", strerror(errno));
    _exit(pid < 0);
}

/*
 * Fork a runner per request on `control` (one byte string with one fd: the runner's control socket)
 * until it closes; returns the exit status (0: closed, 1: failed). `library`: wasmtime's C API library.
 */
static int serve(int control, const char *library) {
    char why[600];
    if (load_api(library, why, sizeof why) < 0) {
        log_line("fork-server: %s", why);
        return 1;
    }
    runner_t runner;
    memset(&runner, 0, sizeof runner);
    runner.engine = api.wasm_engine_new();
    wasmtime_linker_t *linker = api.wasmtime_linker_new(runner.engine);
    wasmtime_error_t *error = api.wasmtime_linker_define_wasi(linker);
    if (runner.engine == NULL || error != NULL) {
        if (error != NULL)
            error_text(error, why, sizeof why);
        log_line("fork-server: cannot build the wasmtime engine and WASI linker: %s",
                 error ? why : "no engine");
        return 1;
    }
    runner.linker = linker;
    for (;;) {
        char request[16];
        int fd = -1;
        size_t fd_count = 0;
        ssize_t n = receive(control, request, sizeof request, &fd, 1, &fd_count);
        if (n < 0) {
            log_line("fork-server: control socket failed: %s", strerror(errno));
            return 1;
        }
        if (n == 0)
            return 0;
        if (fd_count == 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            runner.control = fd;
            fork_runner(control, &runner);
        }
        if (pid < 0)
            log_line("fork-server: cannot fork a runner: %s", strerror(errno));
        else
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
        close(fd);
    }
}

int main(int argc, char **argv) {
    const char *control = NULL, *library = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--control"))
            control = argv[i + 1];
        else if (!strcmp(argv[i], "--wasmtime"))
            library = argv[i + 1];
        else
            control = library = NULL, i = argc;
    }
    char *end = NULL;
    long fd = control ? strtol(control, &end, 10) : -1;
    if (argc != 5 || library == NULL || control == NULL || *end || end == control || fd < 0 || fd > 65535) {
        log_line("wasm-forkserver: usage: wasm-forkserver --control FD --wasmtime LIBRARY "
                 "(FD: an open socket's number)");
        return 2;
    }
    /* what runners had as forks of a Python process: a write to a closed pipe fails with EPIPE instead
     * of killing the module; and Kill's signals are unblocked and keep their default action */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    prctl(PR_SET_NAME, "wasm-forkserver", 0, 0, 0);
    return serve((int)fd, library);
}
