"""Publish a converted GHN folder to the Hugging Face Hub.

    python hub/publish.py out/ghn2-imagenet ghninit/ghn2-imagenet --dry-run
    python hub/publish.py out/ghn2-imagenet ghninit/ghn2-imagenet

checks that OUT_DIR is a loadable GHN in our layout (config.json, model.safetensors, README.md),
creates the model repo if needed and uploads exactly those three files in one commit with
``huggingface_hub.HfApi``; it prints the commit sha and the ``HubWeights`` source that pins it (``ghninit/zoo/registry.py``).
``--dry-run`` prints what would be uploaded and makes no request. The token comes from
``hf auth login`` or ``HF_TOKEN``; ``HF_ENDPOINT`` selects the Hub.

The folder is uploaded as is (``upload_folder``), which is what the mixin's ``push_to_hub`` does
after ``save_pretrained``; calling ``push_to_hub`` here would regenerate the model card.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILES = ("config.json", "model.safetensors", "README.md")


def _sha256(path: Path) -> str:
    from ghninit.zoo.hub import file_sha256

    return file_sha256(path)


def check_folder(folder: Path) -> dict[str, dict]:
    """Files to upload (name -> size, sha256), after checking that the folder loads as a GHN.

    Raises:
        SystemExit: a file is missing or the GHN does not load.
    """
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"{folder}: missing {', '.join(missing)}; create it with hub/convert_ppuda.py")
    from ghninit.zoo.hub import GHNLoadError, load_ghn

    try:
        load_ghn(folder)
    except GHNLoadError as err:
        raise SystemExit(f"{folder} does not load as a GHN: {err}") from err
    return {name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)} for name in FILES}


def card_metadata(folder: Path) -> dict:
    """The YAML metadata of the folder's model card (README.md)."""
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.to_dict()


def publish(
    folder: Path,
    repo_id: str,
    revision: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    message: str | None = None,
) -> str | None:
    """Create ``repo_id`` if needed and upload ``folder``; returns the commit sha (None for a dry run)."""
    from huggingface_hub import HfApi, constants

    folder = Path(folder)
    files = check_folder(folder)
    meta = card_metadata(folder)
    branch = revision or "main"
    print(f"{'[dry run] would publish' if dry_run else 'publishing'} {folder} -> {constants.ENDPOINT}/{repo_id}")
    print(f"  repo: {repo_id} (model, {'private' if private else 'public'}; created if missing), branch: {branch}")
    for name, info in files.items():
        print(f"  {name:18s} {info['size']:>10,d} bytes  sha256 {info['sha256']}")
    if meta.get("source_file"):
        print(f"  converted from {meta['source_file']} (sha256 {meta.get('source_sha256')})")
    if dry_run:
        print("[dry run] nothing was uploaded")
        return None

    api = HfApi()
    repo_id = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True).repo_id
    if branch != "main":
        api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        revision=branch,
        allow_patterns=list(FILES),
        commit_message=message or f"Upload GHN-2 converted from {meta.get('source_file', folder.name)}",
    )
    print(f"uploaded: {commit.commit_url}")
    print(f"commit: {commit.oid}")
    print("pin it: put this first in the sources of its KnownGHN entry in ghninit/zoo/registry.py:")
    print(
        f'    HubWeights("{repo_id}", "{commit.oid}", "{files["model.safetensors"]["sha256"]}", '
        f'"{meta.get("source_file", "?")}")'
    )
    return commit.oid


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(
        description="Upload a converted GHN folder (config.json, model.safetensors, README.md) to a Hugging Face "
        "Hub model repo, creating the repo if needed. Token: `hf auth login` or HF_TOKEN; Hub: HF_ENDPOINT.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder written by hub/convert_ppuda.py")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, e.g. ghninit/ghn2-imagenet")
    parser.add_argument("--revision", help="branch to upload to (created if missing; default: main)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded; no request is made")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--message", help="commit message")
    args = parser.parse_args(argv)
    publish(args.out_dir, args.repo_id, args.revision, args.dry_run, args.private, args.message)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    sys.exit(main())
