#!/usr/bin/env bash
# Build the segmaker image and push it to Amazon ECR (or another registry); print the image URI to use as
# `image_uri` in the SageMaker SDK, as the LAST line of output.
#
#   ./build_and_push.sh [--cpu] [--tag TAG] [--weights bake|skip] [--base IMAGE] NAME
#
#   NAME            the ECR repository (created with scan-on-push if it does not exist)
#   --cpu           the CPU flavour (default: GPU)
#   --tag TAG       the image tag (default: latest)
#   --weights, --base   passed to docker/build_image.sh (see its --help)
#
# Account: `aws sts get-caller-identity`. Region: $AWS_REGION, $AWS_DEFAULT_REGION, else `aws configure get region`.
# AWS_ENDPOINT_URL, when set, is used for every AWS call; SEGMAKER_REGISTRY pushes to that registry host instead
# of <account>.dkr.ecr.<region>.amazonaws.com (the login still uses ECR's token).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG=latest
NAME=""
BUILD_OPTIONS=(--gpu)

die() { echo "build_and_push: $*" >&2; exit 1; }
usage() { sed -n '2,16p' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) BUILD_OPTIONS[0]=--cpu ;;
        --tag) TAG="${2:?--tag needs a value}"; shift ;;
        --weights|--base) BUILD_OPTIONS+=("$1" "${2:?$1 needs a value}"); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$NAME" ] || die "one repository NAME only (got $NAME and $1)"; NAME="$1" ;;
    esac
    shift
done
[ -n "$NAME" ] || { usage >&2; die "missing the repository NAME"; }
[[ "$NAME" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "invalid repository name '$NAME' (lowercase letters, digits, . _ - /)"
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag '$TAG'"

command -v aws >/dev/null || die "the AWS CLI is not installed (pip install awscli, or see https://aws.amazon.com/cli/)"
command -v docker >/dev/null || die "docker is not installed"

# Every AWS call goes through here, so AWS_ENDPOINT_URL reaches all of them (older CLIs ignore the variable).
aws_cli() {
    if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
        aws --endpoint-url "$AWS_ENDPOINT_URL" --region "$REGION" "$@"
    else
        aws --region "$REGION" "$@"
    fi
}

REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}"
[ -n "$REGION" ] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"

ACCOUNT="$(aws_cli sts get-caller-identity --query Account --output text 2>/tmp/build_and_push.$$.err)" || {
    echo "build_and_push: cannot identify the AWS account; are credentials configured (aws configure, AWS_PROFILE)?" >&2
    sed 's/^/  aws: /' /tmp/build_and_push.$$.err >&2; rm -f /tmp/build_and_push.$$.err; exit 1; }
rm -f /tmp/build_and_push.$$.err

ecr_host() {
    case "$REGION" in
        cn-*) echo "$ACCOUNT.dkr.ecr.$REGION.amazonaws.com.cn" ;;
        *) echo "$ACCOUNT.dkr.ecr.$REGION.amazonaws.com" ;;
    esac
}
REGISTRY="${SEGMAKER_REGISTRY:-$(ecr_host)}"
IMAGE_URI="$REGISTRY/$NAME:$TAG"

ensure_repository() {
    if aws_cli ecr describe-repositories --repository-names "$NAME" >/dev/null 2>&1; then
        echo "build_and_push: ECR repository $NAME exists"
    else
        echo "build_and_push: creating ECR repository $NAME (scan on push)"
        aws_cli ecr create-repository --repository-name "$NAME" \
            --image-scanning-configuration scanOnPush=true >/dev/null \
            || die "cannot create ECR repository $NAME in $REGION"
    fi
}

# The password goes from the CLI straight into docker's stdin: never into a variable, argument or the log.
docker_login() {
    aws_cli ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY" >/dev/null \
        || die "docker login to $REGISTRY failed"
    echo "build_and_push: logged in to $REGISTRY"
}

ensure_repository
docker_login
"$REPO_ROOT/docker/build_image.sh" "${BUILD_OPTIONS[@]}" --tag "$NAME:$TAG"
docker tag "$NAME:$TAG" "$IMAGE_URI"
docker push "$IMAGE_URI"
echo "$IMAGE_URI"
