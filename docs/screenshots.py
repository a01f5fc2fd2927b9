"""Regenerate docs/images from the current quickstart: MLflow UI screenshots and the search's plots.

    make screenshots          # runs the quickstart first if it has not run here

Starts ``mlflow ui`` on the quickstart's store, and takes each picture with a
real headless browser: Debian's Chromium (``apt-get install chromium``), by
its own ``--screenshot`` flag, no browser download. Pictures:

- ``mlflow_experiment.png``: the experiment's run list;
- ``mlflow_search_run.png``: the newest search run (its verdict tag and metrics);
- ``mlflow_evaluation.png``: one evaluation nested under it;
- ``verdict.png``, ``fitness_by_generation.png``, ``layer_usage.png``: the
  search run's own plots, copied from its artifacts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: apt-get install chromium")


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the MLflow UI did not answer at {url} within {seconds:.0f} s")


def shoot(chrome: str, url: str, out: Path, size: str = "1440,900") -> None:
    # A single-page app: give its scripts virtual time to fetch and draw before the picture.
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(ROOT / "mlflow.db"), help="the quickstart's MLflow store")
    ap.add_argument("--port", type=int, default=5057)
    args = ap.parse_args()
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{Path(args.store).resolve()}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("layersearch-quickstart") or next(iter(client.search_experiments()), None)
    searches = client.search_runs([exp.experiment_id], "tags.`layersearch.kind` = 'search'",
                                  order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    if not searches:
        raise SystemExit(f"no search run in {args.store}: run make quickstart first")
    search = searches[0]
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{search.info.run_id}'",
                              max_results=50)
    evaluation = next((r for r in kids if r.data.tags.get("layersearch.kind") == "evaluation"), None)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in ("verdict.png", "fitness_by_generation.png", "layer_usage.png"):
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(search.info.run_id, f"plots/{name}", tmp)
            shutil.copy(local, IMAGES / name)
            print(f"wrote docs/images/{name}")
    chrome = browser()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(args.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{args.port}"
        wait_for(base)
        # MLflow 3's UI starts in its GenAI view; these are model-training runs.
        view = "?workflowType=machine_learning"
        shoot(chrome, f"{base}/#/experiments/{exp.experiment_id}{view}", IMAGES / "mlflow_experiment.png")
        shoot(chrome, f"{base}/#/experiments/{exp.experiment_id}/runs/{search.info.run_id}{view}",
              IMAGES / "mlflow_search_run.png", "1440,1400")
        if evaluation is not None:
            shoot(chrome, f"{base}/#/experiments/{exp.experiment_id}/runs/{evaluation.info.run_id}{view}",
                  IMAGES / "mlflow_evaluation.png", "1440,1400")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
