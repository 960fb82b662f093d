"""A Jupyter kernel that starts the kit's Python, for a cluster's web interface or any JupyterHub.

A cluster's Jupyter app (Open OnDemand on LUMI, a JupyterHub elsewhere) starts its own JupyterLab, which
knows nothing of the kit's environment. A kernel spec tells it how to start Python: here, exactly as the job
script does (jobscript.setup_lines: the profile's modules, container, environment variables), then the
kit's venv Python with ipykernel. With a container (LUMI) that is `singularity exec ... .venv/bin/python`,
the pattern of JSC's install-singularity-jupyter-kernel.sh; without one, the venv's Python directly.

    python -m workshop_lib kernel install --profile lumi      # for you (~/.local/share/jupyter/kernels)
    python -m workshop_lib kernel install --profile lumi --prefix /project/x/jupyter   # for a shared env
    python -m workshop_lib kernel list | remove NAME
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from .jobscript import (  # the job script's own environment
    SubmitError,
    load_profile,
    python_command,
    setup_lines,
)

PREFIX = "workshop-kit"  # kernel names start with it: `kernel list` shows only the kit's


def kernel_name(profile: dict) -> str:
    return f"{PREFIX}-{Path(profile['_path']).stem}"


def script(profile: dict) -> str:
    """The kernel's start script: the job script's environment section, then ipykernel in the kit's Python."""
    return "\n".join(
        [
            "#!/usr/bin/env bash",
            f"# written by `python -m workshop_lib kernel install` from {profile['_path']}",
            "# a kernel is started without a login shell: make `module` available as a job would have it",
            "type module >/dev/null 2>&1 || source /etc/profile >/dev/null 2>&1 || true",
            setup_lines(profile),
            "# an interactive session may hold part of a node: no fixed per-GPU core masks (jobs keep them)",
            "unset WORKSHOP_CPU_BIND",
            _output_root_line(profile),
            f'exec {python_command(profile)} -m ipykernel_launcher -f "$1"',
            "",
        ]
    )


def _output_root_line(profile: dict) -> str:
    """Runs of the notebooks go to the profile's output_root, $USER expanded when the kernel starts: one
    kernel spec installed for everyone (--prefix) still keeps each participant's runs in their own folder."""
    root = profile.get("output_root")
    if not root:
        return "# the profile names no output_root: runs go to runs/ in the kit's folder"
    return f'export WORKSHOP_OUTPUT_ROOT="{root}"'


def install(profile_name: str, prefix: str | None = None, user: bool = True) -> Path:
    """Install the kit's kernel spec for a profile; returns the spec's folder."""
    from jupyter_client.kernelspec import KernelSpecManager

    profile = load_profile(profile_name)
    name = kernel_name(profile)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        (folder / "kernel.json").write_text("{}")
        dest = Path(
            KernelSpecManager().install_kernel_spec(
                str(folder), name, user=user and not prefix, prefix=prefix
            )
        )
    start = dest / "start-kernel.sh"
    start.write_text(script(profile))
    start.chmod(0o755)
    spec = {
        "argv": ["bash", str(start), "{connection_file}"],
        "display_name": f"Workshop kit ({Path(profile['_path']).stem})",
        "language": "python",
        "metadata": {"workshop_kit": {"profile": str(profile["_path"])}},
    }
    (dest / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return dest


def installed() -> dict[str, str]:
    """The kit's kernel specs Jupyter finds: {name: folder}."""
    from jupyter_client.kernelspec import KernelSpecManager

    return {k: v for k, v in KernelSpecManager().find_kernel_specs().items() if k.startswith(PREFIX)}


def remove(name: str) -> Path:
    from jupyter_client.kernelspec import KernelSpecManager

    found = installed()
    if name not in found:
        raise SubmitError(f"no kit kernel named {name!r}; installed: {', '.join(found) or 'none'}")
    KernelSpecManager().remove_kernel_spec(name)
    return Path(found[name])


def _command(args) -> int:
    try:
        if args.action == "install":
            dest = install(args.profile, args.prefix)
            print(f"installed kernel {dest.name} in {dest}")
            print(f"  it starts: {shlex.join(json.loads((dest / 'kernel.json').read_text())['argv'])}")
            print(
                "  pick it in JupyterLab's launcher or Kernel > Change Kernel; `jupyter kernelspec list` shows it"
            )
        elif args.action == "list":
            for name, folder in installed().items():
                print(f"{name}\t{folder}")
        else:
            print(f"removed {remove(args.name)}")
    except SubmitError as e:
        print(f"kernel: {e}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "kernel", help="install a Jupyter kernel that runs the kit's Python (cluster web interfaces)"
    )
    p.add_argument("action", choices=["install", "list", "remove"])
    p.add_argument("name", nargs="?", help="remove: the kernel's name (see list)")
    p.add_argument(
        "--profile", default="local", help="cluster profile: modules, container, environment (default local)"
    )
    p.add_argument(
        "--prefix",
        help="install under PREFIX/share/jupyter/kernels (a shared environment) instead of for you",
    )
    p.set_defaults(func=_command)
