"""Test helpers: modules built at test time (hand-written WAT, C compiled with clang --target=wasm32-wasi),
leftover checks."""
from __future__ import annotations

import os
import shutil
import subprocess

CLANG = shutil.which("clang")

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wat\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 15))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
TRAP_WAT = '(module (func (export "_start") unreachable))\n'
LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))\n'
NO_START_WAT = '(module (func (export "main")))\n'

#: one C program, the mode is argv[1]
PROG_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;
static volatile char *sink;

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "args";
    if (strcmp(mode, "args") == 0) {
        for (int i = 0; i < argc; i++) printf("arg %s\n", argv[i]);
        for (char **e = environ; *e; e++) printf("env %s\n", *e);
        return 0;
    }
    if (strcmp(mode, "read") == 0 || strcmp(mode, "cwdread") == 0) {
        if (strcmp(mode, "cwdread") == 0 && getenv("PWD") && chdir(getenv("PWD")) != 0) {
            perror("chdir"); return 2;
        }
        FILE *f = fopen(argv[2], "r");
        if (!f) { perror(argv[2]); return 2; }
        char buf[256];
        while (fgets(buf, sizeof buf, f)) fputs(buf, stdout);
        return 0;
    }
    if (strcmp(mode, "write") == 0) {
        FILE *f = fopen(argv[2], "w");
        if (!f) { perror(argv[2]); return 2; }
        fputs(argv[3], f);
        fclose(f);
        return 0;
    }
    if (strcmp(mode, "exit") == 0) {
        fprintf(stderr, "exiting with %s\n", argv[2]);
        exit(atoi(argv[2]));
    }
    if (strcmp(mode, "alloc") == 0) {
        long mib = 0;
        char *p;
        while ((p = malloc(1 << 20)) != NULL) { memset(p, 1, 1 << 20); sink = p; mib++; }
        printf("allocated %ld MiB\n", mib);
        fflush(stdout);
        return 3;
    }
    if (strcmp(mode, "echo") == 0) {
        char buf[256];
        while (fgets(buf, sizeof buf, stdin)) printf("echo: %s", buf);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 1;
}
"""


def build_modules(out: str) -> dict[str, str]:
    """Write the WAT modules and compile the C program into ``out``; returns name -> path."""
    os.makedirs(out, exist_ok=True)
    paths = {}
    for name, text in (("hello.wat", HELLO_WAT), ("trap.wat", TRAP_WAT), ("loop.wat", LOOP_WAT),
                       ("nostart.wat", NO_START_WAT)):
        paths[name] = os.path.join(out, name)
        with open(paths[name], "w") as handle:
            handle.write(text)
    source = os.path.join(out, "prog.c")
    with open(source, "w") as handle:
        handle.write(PROG_C)
    paths["prog.wasm"] = os.path.join(out, "prog.wasm")
    subprocess.run([CLANG or "clang", "--target=wasm32-wasi", "-O2", "-o", paths["prog.wasm"], source], check=True)
    paths["fake.wasm"] = os.path.join(out, "fake.wasm")
    with open(paths["fake.wasm"], "w") as handle:
        handle.write("#!/bin/sh\necho I am not WebAssembly\n")
    return paths


def cgroup_exists(path: str) -> bool:
    """Whether ``path`` exists in any v1 hierarchy (or the v2 root)."""
    root = "/sys/fs/cgroup"
    return any(os.path.isdir(os.path.join(root, h, path.strip("/"))) for h in os.listdir(root)) or \
        os.path.isdir(os.path.join(root, path.strip("/")))


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (leftover detection)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if text.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found
