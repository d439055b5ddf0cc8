/* The wasm demo module: built by demo.sh with `clang --target=wasm32-wasi -O2 -o hello.wasm hello.c`.
 *   hello.wasm serve NAME   print a greeting, the args, env GREETING and a preopened file, then tick
 *   hello.wasm exit N       print to stdout and stderr, exit with status N */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "serve";
    if (strcmp(mode, "exit") == 0) {
        printf("exec'd module says hi\n");
        fprintf(stderr, "and exits with %s\n", argc > 2 ? argv[2] : "0");
        return argc > 2 ? atoi(argv[2]) : 0;
    }
    printf("%s: hello from WebAssembly, GREETING=%s\n", argc > 2 ? argv[2] : "wasm",
           getenv("GREETING") ? getenv("GREETING") : "");
    FILE *f = fopen("/etc/motd.txt", "r");
    char line[256];
    if (f && fgets(line, sizeof line, f)) printf("%s: /etc/motd.txt says: %s", argc > 2 ? argv[2] : "wasm", line);
    for (int tick = 1;; tick++) {
        printf("%s: tick %d\n", argc > 2 ? argv[2] : "wasm", tick);
        fflush(stdout);
        sleep(2);
    }
}
