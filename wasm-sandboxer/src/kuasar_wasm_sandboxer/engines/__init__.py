"""WebAssembly engines, one module each; only the fork-server (and the runners it forks) imports them, never
the task server."""
