"""Push a finished run's model or LoRA adapter to the Hugging Face hub.

    python -m workshop_lib push runs/my-run my-org/my-model [--private] [--dry-run]

Uploads <run>/final (weights or adapter, tokenizer with its chat template, the model card and its loss
plot) with huggingface_hub: create_repo, then upload_folder. When it cannot (no final model, offline, no
token, no network) it prints one line saying why and what to do, exits 2, and uploads nothing.
Compute nodes usually have no network: push from a login node.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

from . import modelcard
from .runfolder import PREEMPTED_FILE

# training_args.bin is a pickle of the TrainingArguments: not needed to use the model (the card has the
# recipe), it holds local paths, and the hub flags pickles.
IGNORE = ("training_args.bin", ".*")


class PushError(RuntimeError):
    """Why nothing was uploaded, and what to do."""


def files_to_upload(run_dir: str | Path) -> list[Path]:
    """The files of <run>/final that push uploads (relative to final/)."""
    final = Path(run_dir) / "final"
    return sorted(
        p.relative_to(final)
        for p in final.rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(p.name, pat) for pat in IGNORE)
    )


def check_run(run_dir: Path) -> None:
    """A run folder with a final model, or a PushError saying what state it is in."""
    if not run_dir.is_dir():
        raise PushError(f"{run_dir}: no such folder. Give a run folder, e.g. runs/<name>.")
    if not (run_dir / "final").is_dir():
        if (run_dir / PREEMPTED_FILE).exists():
            state = "it stopped with a checkpoint (preempted or time limit): resume it to finish"
        elif (run_dir / "recipe.yaml").exists():
            state = "it has not finished (still running, or killed): resume it (resume: true) to finish"
        else:
            state = "it is not a run folder written by the kit (no recipe.yaml)"
        raise PushError(f"{run_dir}: no final/ model to push: {state}, then push again.")


def check_hub() -> str:
    """The token to push with, or a PushError: offline by setting, or no token."""
    from huggingface_hub import get_token

    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if offline and offline.lower() not in ("0", "false", "no"):
        raise PushError(
            "HF_HUB_OFFLINE is set: this environment is offline on purpose (compute nodes usually are). Push "
            "from a machine with network, e.g. the login node, with HF_HUB_OFFLINE unset."
        )
    token = get_token()
    if not token:
        raise PushError(
            "no Hugging Face token: log in once with `hf auth login` (older huggingface_hub: "
            "`huggingface-cli login`) or set HF_TOKEN to a write token from https://huggingface.co/settings/tokens."
        )
    return token


def push(run_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload <run>/final to the hub repository repo_id (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    run_dir = Path(run_dir)
    check_run(run_dir)
    api = HfApi(token=check_hub())
    try:
        api.whoami()
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        raise PushError(
            f"the hub refused the token (HTTP {status}): log in again with `hf auth login` or set HF_TOKEN "
            "to a token with write access."
        ) from None
    except Exception as e:  # noqa: BLE001 (DNS, refused, timeout: whatever the HTTP client raises)
        raise PushError(
            f"cannot reach the hub (https://huggingface.co): {type(e).__name__}: {e}. No network here? Push "
            "from a machine with network, e.g. the login node."
        ) from None
    modelcard.write(run_dir, repo_id=repo_id)  # the card names the repository in its usage example
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(run_dir / "final"),
        ignore_patterns=list(IGNORE),
        commit_message=f"workshop kit: {run_dir.name}",
    )
    return str(getattr(info, "commit_url", info))


def _main(args) -> int:
    run_dir = Path(args.run)
    try:
        if args.dry_run:
            check_run(run_dir)
            modelcard.write(run_dir, repo_id=args.repo_id)
            files = files_to_upload(run_dir)
            print(
                f"push --dry-run: would upload {len(files)} file(s) of {run_dir / 'final'} to {args.repo_id}:"
            )
            print("\n".join(f"  {f}" for f in files))
            return 0
        url = push(run_dir, args.repo_id, private=args.private)
    except PushError as e:
        print(f"push: {e} Nothing was uploaded.", file=sys.stderr)
        return 2
    print(f"push: uploaded {run_dir / 'final'} -> {url}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "push",
        help="upload a finished run's model or adapter (final/) to the Hugging Face hub",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("run", help="run folder (runs/<name>)")
    p.add_argument("repo_id", help="hub repository, e.g. my-org/my-model (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument(
        "--dry-run", action="store_true", help="write the card and list what would be uploaded; no network"
    )
    p.set_defaults(func=_main)
