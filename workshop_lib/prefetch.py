"""Fetch what training needs from the Hugging Face hub before the day, on a machine with internet.

Compute nodes are often offline (the LUMI profile sets HF_HUB_OFFLINE=1), so models and datasets go into the
cache the jobs read (the profile's HF_HOME) from the login node beforehand. Only what training reads is
fetched: the config, the tokenizer and chat template, and the weights (safetensors when the repository has
them, else the .bin files), not the repository's other formats (GGUF, ONNX, the original checkpoints). For a
dataset, its data files. Sizes and free space are shown first; `--dry-run` stops there.

    python -m workshop_lib prefetch recipes/llama8b_lora.yaml --profile lumi --dry-run
    python -m workshop_lib prefetch meta-llama/Llama-3.1-8B-Instruct --hf-home /scratch/project_x/hf_cache
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# What a model's training reads: config, tokenizer files and template, weights (filtered further below).
MODEL_FILES = [
    "*.json",
    "*.safetensors",
    "*.bin",
    "tokenizer.model",
    "*.tiktoken",
    "*.jinja",
    "*.txt",
    "tekken.json",
]
SKIP = ["original/*", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "consolidated*", "*.pth", "*.pt"]
DATASET_FILES = ["*.parquet", "*.jsonl", "*.json", "*.csv", "*.tsv", "*.arrow", "*.txt", "*.jsonl.gz"]


class PrefetchError(RuntimeError):
    """A foreseen reason why nothing can be fetched: one sentence with the fix."""


@dataclass
class Item:
    repo_id: str
    repo_type: str  # "model" or "dataset"
    files: list  # DryRunFileInfo: filename, file_size, is_cached, will_download

    @property
    def to_download(self) -> int:
        return sum(f.file_size or 0 for f in self.files if f.will_download)

    @property
    def total(self) -> int:
        return sum(f.file_size or 0 for f in self.files)


def items_of(names: list[str]) -> list[tuple[str, str]]:
    """(repo_id, repo_type) for each name: a recipe file gives its model and its hub datasets; a name that
    is no file is a model id, or a dataset id with `dataset:` in front."""
    from .model import is_hub_id
    from .paths import resolve
    from .recipe import read_yaml

    out: list[tuple[str, str]] = []
    for name in names:
        if name.endswith((".yaml", ".yml")) and resolve(name).exists():
            recipe = read_yaml(name)
            model = str(recipe.get("model", "tiny"))
            if is_hub_id(model):
                out.append((model, "model"))
            for key in ("train_file", "eval_file"):
                for spec in _sources(recipe.get(key)):
                    if _is_hub_id(spec):
                        out.append((spec.split(":")[0], "dataset"))
        elif name.startswith("dataset:"):
            out.append((name.removeprefix("dataset:"), "dataset"))
        else:
            out.append((name, "model"))
    return list(dict.fromkeys(out))


def _sources(spec) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, list):
        return [str(x["path"]) for x in spec if isinstance(x, dict) and "path" in x]
    return []


def _is_hub_id(spec: str) -> bool:
    from .paths import resolve

    return (
        "/" in spec
        and not spec.startswith((".", "/", "~"))
        and not resolve(spec).exists()
        and (not spec.split(":")[0].endswith((".jsonl", ".json", ".csv", ".parquet")))
    )


def _wanted(filenames: list[str], repo_type: str) -> list[str]:
    """The files training reads, from a repository's list."""
    if repo_type == "dataset":
        return [f for f in filenames if any(fnmatch.fnmatch(f, p) for p in DATASET_FILES)]
    keep = [
        f
        for f in filenames
        if any(fnmatch.fnmatch(f, p) for p in MODEL_FILES) and not any(fnmatch.fnmatch(f, p) for p in SKIP)
    ]
    if any(f.endswith(".safetensors") for f in keep):  # the same weights twice: keep the safer format
        keep = [f for f in keep if not fnmatch.fnmatch(f, "*.bin")]
    return keep


def plan(repos: list[tuple[str, str]], cache_dir: Path) -> list[Item]:
    """What would be fetched for each repository, with sizes, without downloading anything."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    items = []
    for repo_id, repo_type in repos:
        try:
            listed = api.list_repo_files(repo_id, repo_type=repo_type)
            files = snapshot_download(
                repo_id,
                repo_type=repo_type,
                cache_dir=cache_dir,
                allow_patterns=_wanted(listed, repo_type),
                dry_run=True,
            )
        except GatedRepoError:
            raise PrefetchError(
                f"{repo_id}: a gated repository: accept its licence on the hub's page, then log in here "
                "(`hf auth login` or HF_TOKEN) and run prefetch again."
            ) from None
        except RepositoryNotFoundError:
            raise PrefetchError(
                f"{repo_id}: no such {repo_type} on the hub (or it is private: log in with `hf auth login`). "
                + ("A dataset id needs `dataset:` in front." if repo_type == "model" else "")
            ) from None
        items.append(Item(repo_id, repo_type, list(files)))
    return items


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def report(items: list[Item], cache_dir: Path) -> tuple[str, int]:
    """A table of what is needed, cached already and to download, and the free space; (text, bytes)."""
    lines = [f"into {cache_dir}"]
    for it in items:
        cached = sum(f.is_cached for f in it.files)
        lines.append(
            f"  {it.repo_type:7} {it.repo_id}: {len(it.files)} files, {_gb(it.total)}; "
            f"cached {cached}, to download {_gb(it.to_download)}"
        )
    need = sum(it.to_download for it in items)
    return "\n".join(lines), need


def free_space(path: Path) -> int:
    """Bytes free where the cache lives (its nearest existing parent)."""
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def hf_home(profile: str | None, given: str | None) -> Path:
    """The cache the jobs read: --hf-home, else the profile's HF_HOME, else this environment's."""
    if given:
        return Path(os.path.expandvars(given)).expanduser()
    if profile:
        from .jobscript import load_profile

        return _profile_home(load_profile(profile))
    return _profile_home({})


def _profile_home(profile: dict) -> Path:
    """A loaded profile's HF_HOME, else this environment's."""
    home = (profile.get("env") or {}).get("HF_HOME")
    if home:
        return Path(os.path.expandvars(str(home))).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def offline(value: object) -> bool:
    """Whether an HF_HUB_OFFLINE value turns the hub off (huggingface_hub's own spellings)."""
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _runs_offline(profile: dict) -> bool:
    """Whether a profile's jobs run with the hub turned off (HF_HUB_OFFLINE in its env)."""
    return offline((profile.get("env") or {}).get("HF_HUB_OFFLINE"))


@functools.cache
def hub_status(timeout_s: float = 3.0) -> tuple[bool, str]:
    """(reachable, why) for the Hugging Face hub, decided once per process and never by waiting on retries:
    HF_HUB_OFFLINE=1 answers at once, else one TCP connection to the endpoint with a short timeout."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE=1 is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"{host} answers"
    except OSError as e:
        return False, f"{host} cannot be reached ({e.strerror or type(e).__name__}: no internet here?)"


def in_cache(home: Path, repo_id: str, repo_type: str) -> bool:
    """Whether a job reading HF_HOME=home offline finds this model (its config.json in the hub cache) or
    dataset (prepared by datasets in home/datasets, under datasets' own folder name org___name)."""
    if repo_type == "model":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=str(home / "hub")), str)
    org, _, name = repo_id.partition("/")
    return any((home / "datasets").glob(f"{org}___{name}*"))


def missing_offline(profile: dict, profile_name: str, model: str) -> str | None:
    """What a job would fail on at its start, said before it is queued: the profile runs offline
    (HF_HUB_OFFLINE in its env) and the recipe's hub model is not in the cache the job reads."""
    from .model import is_hub_id

    if not _runs_offline(profile) or not is_hub_id(model) or "/" not in model:
        return None
    home = _profile_home(profile)  # the profile at hand: not read again per sweep task
    return (
        None if in_cache(home, str(model), "model") else _fetch_first(profile_name, home, str(model), "model")
    )


def _fetch_first(profile_name: str, home: Path, repo_id: str, repo_type: str) -> str:
    name = f"dataset:{repo_id}" if repo_type == "dataset" else repo_id
    return (
        f"{repo_type} {repo_id!r} is not in the cache the job reads ({home}), and profile {profile_name!r} runs "
        f"offline (HF_HUB_OFFLINE=1): fetch it first, where there is internet: python -m workshop_lib prefetch "
        f"{name} --profile {profile_name}"
    )


def offline_cache(profile_name: str, names: list[str]) -> list[tuple[bool, str]]:
    """doctor's check for a profile: (found, sentence) per model and hub dataset that names (recipe files,
    model ids, dataset:ids) need, when the profile runs offline; one line saying so when it reaches the hub."""
    from .jobscript import load_profile

    profile = load_profile(profile_name)
    home = _profile_home(profile)
    if not _runs_offline(profile):
        return [
            (
                True,
                f"profile {profile_name!r} reaches the hub (no HF_HUB_OFFLINE): nothing must be fetched first",
            )
        ]
    return [
        (True, f"{kind} {repo} is in {home}")
        if in_cache(home, repo, kind)
        else (False, _fetch_first(profile_name, home, repo, kind))
        for repo, kind in items_of(names)
    ]


def prefetch(
    names: list[str], profile: str | None = None, home: str | None = None, dry_run: bool = False
) -> int:
    """The command: plan, show, check space, download. Exit 0 done, 1 not enough space, 2 cannot."""
    from huggingface_hub import constants, snapshot_download

    cache = hf_home(profile, home) / "hub"
    repos = items_of(names)
    if not repos:
        print("prefetch: nothing to fetch (the tiny model and local files need no download).")
        return 0
    if constants.HF_HUB_OFFLINE:
        raise PrefetchError(
            "HF_HUB_OFFLINE=1 is set here: prefetch must run where the hub is reachable (the login node). "
            "Run it with HF_HUB_OFFLINE=0."
        )
    online, why = hub_status()
    if not online:
        raise PrefetchError(f"the hub cannot be reached: {why}. Run prefetch on a machine with internet.")
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    disable_progress_bars()  # the dry run's per-repository bars say nothing the table does not
    try:
        items = plan(repos, cache)
    finally:
        enable_progress_bars()
    text, need = report(items, cache)
    free = free_space(cache)
    print(f"{text}\n  needed {_gb(need)}, free {_gb(free)}")
    if need > free:
        print(
            f"prefetch: not enough space in {cache}: {_gb(need)} needed, {_gb(free)} free.", file=sys.stderr
        )
        return 1
    if dry_run:
        print("dry run: nothing downloaded")
        return 0
    for it in items:
        if it.repo_type == "model":
            snapshot_download(it.repo_id, cache_dir=cache, allow_patterns=[f.filename for f in it.files])
        else:  # datasets read a hub id offline from their own cache: let them prepare it there
            import datasets

            datasets.load_dataset(it.repo_id, cache_dir=str(cache.parent / "datasets"))
        print(f"  fetched {it.repo_type} {it.repo_id}")
    print(f"done: jobs read them with HF_HOME={cache.parent} (and HF_HUB_OFFLINE=1 on offline nodes)")
    return 0


def _command(args) -> int:
    try:
        return prefetch(args.names, args.profile, args.hf_home, args.dry_run)
    except PrefetchError as e:
        print(f"prefetch: {e}", file=sys.stderr)
        return 2


def register(sub) -> None:
    p = sub.add_parser(
        "prefetch", help="download models and datasets a recipe needs into the HF cache (login node)"
    )
    p.add_argument("names", nargs="+", help="recipe files, model ids, or dataset ids as dataset:org/name")
    p.add_argument("--profile", help="a cluster profile: its env HF_HOME is the cache the jobs read")
    p.add_argument("--hf-home", help="the cache folder (HF_HOME) to fill; overrides the profile's")
    p.add_argument("--dry-run", action="store_true", help="show sizes and free space, download nothing")
    p.set_defaults(func=_command)
