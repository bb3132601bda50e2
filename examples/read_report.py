"""Looking at the plots: fetch a finished job's output.tar.gz and open report.html (curves, per-class IoU
and Dice, confusion matrix, prediction examples: one self-contained page).

    python examples/read_report.py --job-name segmaker-pets-fcn-2026-12-01-20-00-00-000 --to report/
    python examples/read_report.py --model-data s3://my-bucket/out/JOB/output/model.tar.gz --to report/
    python examples/read_report.py --model-data /tmp/segmaker-local/output/JOB/model.tar.gz --to report/

The output lies beside model.tar.gz as output.tar.gz. --open shows the report in the default browser.
"""

import argparse
import json
import sys
import webbrowser
from pathlib import Path

from common import job_outputs


class _Finished:
    """What job_outputs needs of an estimator: the model's location (and a session for S3)."""

    def __init__(self, model_data: str, session=None):
        self.model_data, self.sagemaker_session = model_data, session


def main(argv) -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = options.add_mutually_exclusive_group(required=True)
    where.add_argument("--job-name", help="a SageMaker training job (looked up with DescribeTrainingJob)")
    where.add_argument("--model-data", help="the job's model.tar.gz URI (s3:// or file://) or path")
    options.add_argument("--to", type=Path, required=True, help="folder to write the outputs into")
    options.add_argument("--open", action="store_true", help="open report.html in the browser")
    args = options.parse_args(argv)
    session = None
    model_data = args.model_data
    if args.job_name:
        import sagemaker

        session = sagemaker.Session()
        model_data = session.describe_training_job(args.job_name)["ModelArtifacts"]["S3ModelArtifacts"]
    elif "://" not in model_data:
        model_data = Path(model_data).resolve().as_uri()
    files = job_outputs(_Finished(model_data, session))
    args.to.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.to / name).write_bytes(data)
    report = (args.to / "report.html").resolve()
    print(f"wrote {len(files)} files to {args.to}: {', '.join(sorted(files))}")
    print(f"open {report}")
    if args.open:
        webbrowser.open(report.as_uri())
    print(json.dumps({"report": str(report), "files": sorted(files)}))


if __name__ == "__main__":
    main(sys.argv[1:])
