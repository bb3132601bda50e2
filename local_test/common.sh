# shellcheck shell=bash disable=SC2034  # sourced by the other scripts, which use these variables
# Shared settings of the local_test scripts (sourced, not run).
# IMAGE: the image to run (default segmaker:cpu). WORK_DIR: where the /opt/ml tree lives while you experiment;
# the scripts never write into the repository (local_test/test_dir is copied there first).
LOCAL_TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${IMAGE:-segmaker:cpu}"
WORK_DIR="${WORK_DIR:-${TMPDIR:-/tmp}/segmaker-local}"
OPT_ML="$WORK_DIR/opt_ml"
PORT="${PORT:-8080}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
