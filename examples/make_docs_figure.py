"""Draw docs/img/episode.png: the report figure of one sample run with an injected fault.

    python examples/make_docs_figure.py [--run tensorboard/mlp-lr-spike]
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import gradaudit
from gradaudit.report.figures import RunFigure

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="tensorboard/mlp-lr-spike", help="run name to draw")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "episode.png"))
    args = parser.parse_args()
    result = gradaudit.scan([str(ROOT / "sample_logs")])
    (run,) = [r for r in result.runs if r.run == args.run]
    uri = RunFigure().png_data_uri(run)
    if uri is None:
        raise SystemExit(f"{args.run} has no findings to draw")
    Path(args.out).write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
