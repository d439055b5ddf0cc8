"""WebAssembly engines, one module each; only the runner process imports them (never the task server)."""
