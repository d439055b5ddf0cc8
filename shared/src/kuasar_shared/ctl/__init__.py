"""kuasar-ctl: an engine client that drives Kuasar sandboxers with containerd 2.x's CRI call sequences.

Modules: ``cli`` (commands and output; console script ``kuasar-ctl = kuasar_shared.ctl.cli:main``),
``engine`` (pod/container lifecycle over the Sandbox and Task APIs), ``exec`` (ExecSync),
``clients`` (gRPC/ttrpc clients), ``config`` (crictl JSON/YAML files), ``spec`` (the container's OCI
spec as containerd builds it), ``host`` (netns, sandbox files, image stand-in, mounts), ``io`` +
``logwriter`` (FIFO/streaming stdio, CRI logs), ``metadata`` (client-side pod and container records),
``plugins`` (subcommands added by sandbox-type packages).
"""
