"""``python -m pipeline.world._worker JOB.json``: train one of the world's models for a parallel build."""

import json
import sys
from pathlib import Path

if __name__ == "__main__":
    from pipeline.world import WorldRecipe, _train_one

    job_path = Path(sys.argv[1])
    job = json.loads(job_path.read_text())
    which, seconds = _train_one((job["which"], job["seed"], WorldRecipe.from_json(job["recipe"]), job["out"]),
                                log=lambda msg: print(msg, flush=True))
    (job_path.parent / f"done-{which}.json").write_text(json.dumps([which, seconds]))
