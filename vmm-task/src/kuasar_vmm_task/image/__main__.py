"""``python3 -m kuasar_vmm_task.image <outdir>``: build (or reuse) vmlinux.bin and kuasar.initrd."""
import sys

from kuasar_vmm_task.image.build import main

sys.exit(main())
