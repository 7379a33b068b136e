"""Publish model pairs to Hub model repos and the app to a Space, in one command.

python -m tools.publish --models ORG [--space ORG/NAME] [--pair ID ...] [--registry FILE] [--private]

1. Each local model of the chosen pairs (all pairs of the registry by default) goes to the model repo
   ORG/<its folder name> through ifa.hub.push_to_hub: config.json, model.safetensors (sent through LFS / Xet
   by huggingface_hub's upload API, no git LFS needed here) and its card. Each push returns a commit sha.
2. With --space, the app's files are staged in a temporary folder and uploaded to the Space repo with
   HfApi.upload_folder: app.py, ifa/, assets/, requirements.txt, LICENSE, and
   - checkpoints/registry.json naming the pairs' models as Hub sources pinned at those commit shas (the Space
     holds no weights);
   - README.md whose front matter (huggingface_hub's SpaceCard) gains `models:` (the model repos) and
     `preload_from_hub:` (their files at the pinned commits, fetched into the Space's cache at build time).
The checkout itself (its registry, README and checkpoints) is left as it is: the offline default stays local.
A token with write access comes from `hf auth login`, HF_TOKEN or --token.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, SpaceCard
from huggingface_hub.errors import HfHubHTTPError

from ifa.app.registry import app_home, read_registry, registry_path
from ifa.hub import HubError, push_to_hub
from ifa.io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

# What the Space needs of the project (relative to the app's home); tests, tools, configs and runs stay behind.
SPACE_FILES = ("app.py", "requirements.txt", "LICENSE", "README.md")
SPACE_FOLDERS = ("ifa", "assets")


def publish_models(registry_file: Path, org: str, pair_ids: list[str] | None = None, private: bool = False,
                   token: str | None = None) -> list[dict]:
    """Push every local model of the chosen pairs to ORG/<folder name>; returns the pairs as registry entries
    with Hub sources pinned at the pushed commits."""
    registry = read_registry(registry_file)
    chosen = pair_ids or list(registry.pairs)
    unknown = [p for p in chosen if p not in registry.pairs]
    if unknown:
        raise SystemExit(f"error: unknown pair(s) {', '.join(unknown)}; the registry has {', '.join(registry.pairs)}")
    pushed: dict[str, tuple[str, str]] = {}  # local folder -> (repo id, commit)
    entries = []
    for pair_id in chosen:
        spec = registry.pairs[pair_id]
        sides = {}
        for side, source in (("baseline", spec.baseline), ("ifa", spec.ifa)):
            if source.source == "hub":
                sides[side] = source.to_dict()
                continue
            if source.location not in pushed:
                repo_id = f"{org}/{Path(source.location).name}"
                sha = push_to_hub(source.location, repo_id, private=private, token=token,
                                  commit_message=f"Upload {Path(source.location).name} (IFA Explorer pair {pair_id})")
                pushed[source.location] = (repo_id, sha)
                print(f"model {repo_id}: commit {sha}", file=sys.stderr)
            repo_id, sha = pushed[source.location]
            sides[side] = {"source": "hub", "repo_id": repo_id, "revision": sha}
        entries.append({"id": spec.id, "title": spec.title, "dataset": spec.dataset, "classes": list(spec.classes),
                        **sides})
    return entries


def stage_space(folder: Path, home: Path, pairs: list[dict], default: str | None) -> Path:
    """The Space's files in `folder`: the app, its registry of Hub sources, README with models + preload."""
    for name in SPACE_FILES:
        shutil.copy2(home / name, folder / name)
    for name in SPACE_FOLDERS:
        shutil.copytree(home / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / "checkpoints").mkdir()
    registry = {"default": default if any(p["id"] == default for p in pairs) else pairs[0]["id"], "pairs": pairs}
    (folder / "checkpoints" / "registry.json").write_text(json.dumps(registry, indent=2) + "\n")
    card = SpaceCard.load(folder / "README.md")
    models = sorted({p[side]["repo_id"] for p in pairs for side in ("baseline", "ifa")})
    revisions = {p[side]["repo_id"]: p[side]["revision"] for p in pairs for side in ("baseline", "ifa")}
    card.data.models = models
    card.data.preload_from_hub = [f"{repo} {CONFIG_NAME},{WEIGHTS_NAME},{CARD_NAME} {revisions[repo]}"
                                  for repo in models]
    card.save(folder / "README.md")
    return folder


def publish(org: str, space: str | None = None, pair_ids: list[str] | None = None,
            registry_file: Path | None = None, private: bool = False, token: str | None = None) -> dict:
    """Models, then (with `space`) the app; returns {"pairs": registry entries, "space_commit": sha or None}."""
    registry_file = Path(registry_file or registry_path())
    pairs = publish_models(registry_file, org, pair_ids, private, token)
    result = {"pairs": pairs, "space": space, "space_commit": None}
    if space:
        default = json.loads(registry_file.read_text()).get("default")
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="ifa-space-") as tmp:
            staged = stage_space(Path(tmp), app_home(), pairs, default)
            api.create_repo(space, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=space, repo_type="space", folder_path=staged,
                                     commit_message="Publish IFA Explorer (models pinned by commit)")
        result["space_commit"] = info.oid
        print(f"space {space}: commit {info.oid}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.publish", description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True, metavar="ORG", help="the Hub user or organisation of the model repos")
    p.add_argument("--space", metavar="ORG/NAME", help="also publish the app to this Space")
    p.add_argument("--pair", action="append", help="a pair id of the registry (repeatable; default: every pair)")
    p.add_argument("--registry", type=Path, help="registry file (default: the app's, checkpoints/registry.json)")
    p.add_argument("--private", action="store_true", help="create missing repos as private")
    p.add_argument("--token", help="a Hub token with write access (default: the logged-in one / HF_TOKEN)")
    args = p.parse_args(argv)
    try:
        result = publish(args.models, args.space, args.pair, args.registry, args.private, args.token)
    except (HubError, HfHubHTTPError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
