"""Bake GluonCV's ImageNet backbone weights into the image at build time, SHA-1 checked.

GluonCV's own downloader does the work: its model_store knows each file's name
(`resnet50_v1s-25a187fa.params`) and full SHA-1, fetches `<repo>/gluon/models/<name>.zip`, and refuses a file
whose hash differs. The repository URL is a build argument so a mirror (or an internal bucket) can stand in
for Apache's.

    python fetch_pretrained_weights.py --repo-url URL DEST_DIR NAME [NAME ...]
"""

import argparse
import os
import sys
from pathlib import Path
from typing import List


def fetch(name: str, dest_dir: Path, repo_url: str) -> Path:
    """Download `name` into dest_dir unless a file with the right hash is already there; return its path."""
    from gluoncv.model_zoo import model_store
    from gluoncv.utils import check_sha1

    os.environ["MXNET_GLUON_REPO"] = repo_url
    os.environ.pop("MXNET_HOME", None)  # it would override dest_dir inside get_model_file
    expected = model_store._model_sha1[name]  # noqa: SLF001 - the hash table GluonCV itself checks against
    path = Path(model_store.get_model_file(name, root=str(dest_dir)))
    if not check_sha1(str(path), expected):  # get_model_file checks too; a baked file must never be wrong
        raise ValueError(f"{path} does not have SHA-1 {expected}")
    (dest_dir / (path.stem + ".lock")).unlink(missing_ok=True)  # portalocker's lock; useless in the image
    return path


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-url", required=True, help="GluonCV model repository (ends with /)")
    parser.add_argument("dest_dir", type=Path)
    parser.add_argument("names", nargs="+", help="GluonCV model_store names, e.g. resnet50_v1s")
    args = parser.parse_args(argv)
    for name in args.names:
        try:
            path = fetch(name, args.dest_dir, args.repo_url)
        except Exception as exc:  # any failure: one clear line and the way out, not a traceback
            reason = f"{type(exc).__name__}: {exc}"
            print(f"cannot fetch pretrained weights {name} from {args.repo_url}: {reason}\n"
                  "Build with --build-arg PRETRAINED_WEIGHTS=skip to leave them out (jobs then need "
                  "use_pretrained_model=False or a `pretrained` channel), or point --build-arg "
                  "WEIGHTS_REPO_URL at a mirror.",
                  file=sys.stderr)
            return 1
        print(f"baked {path} ({path.stat().st_size} bytes, SHA-1 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
